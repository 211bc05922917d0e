import os

from django.core.wsgi import get_wsgi_application

# The files that the web server creates (database files, logs, packages)
# contain health information, so only the service's user may read them.
os.umask(0o077)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "viewbox.settings")
application = get_wsgi_application()
