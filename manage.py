#!/usr/bin/env python3
import os
import sys

if __name__ == "__main__":
    # The database, logs and stored files hold health information: whatever
    # a command creates is for the service's user alone.
    os.umask(0o077)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "viewbox.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
