import os

from django.core.wsgi import get_wsgi_application

# Whatever the web server creates (database files, logs, packages) holds
# health information, for the service's user alone.
os.umask(0o077)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "viewbox.settings")
application = get_wsgi_application()
