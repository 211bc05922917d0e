#!/usr/bin/env python3
import os
import sys

if __name__ == "__main__":
    # The database, logs and stored files contain health information, so
    # only the service's user may read what a command creates.
    os.umask(0o077)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "viewbox.settings")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        execute_from_command_line(sys.argv)
    except ImproperlyConfigured as error:
        # An invalid value in the environment stops the settings from loading.
        # It is the operator's to fix, so print its one-line message, not a
        # traceback. Other configuration errors keep their traceback.
        if settings.configured:
            raise
        sys.exit(f"Cannot load the settings: {error}")
