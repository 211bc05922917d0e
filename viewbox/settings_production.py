"""Settings for a production site (`viewbox.settings_production`).

Everything in ``viewbox.settings`` applies, read from the same environment
variables, with these differences:

- ``VIEWBOX_SECRET_KEY``, ``VIEWBOX_ICODE_KEY`` and ``VIEWBOX_AUDIT_KEY``
  must be set, at least 50 characters each. Without them the site does
  not start. It never generates keys into the data folder, where a backup
  would carry them away.
- ``VIEWBOX_ALLOWED_HOSTS`` must be set to the host names served.
- Debug pages and the demo mailbox are off whatever the environment sets.
- HTTPS only: redirects from HTTP, HSTS for a year with subdomains and
  preload, and cookies that browsers send only over HTTPS to this exact host
  (the ``__Host-`` prefix).
- ``X-Forwarded-Proto`` is trusted only when ``VIEWBOX_PROXY_COUNT`` is 1
  or more, that is when the operator says a TLS-terminating proxy sets it.

``manage.py check --deploy --fail-level WARNING`` passes with these settings;
a test in ``viewbox/tests/test_hardening.py`` keeps it so.
"""

import os

from django.core.exceptions import ImproperlyConfigured

# Django's deployment check requires keys of at least 50 characters.
_MIN_KEY_LENGTH = 50


def _require(name: str, min_length: int = 1) -> str:
    value = os.environ.get(name, "")
    if len(value) < min_length:
        raise ImproperlyConfigured(
            f"{name} must be set to at least {min_length} characters in production "
            f"(got {len(value)}); generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
        )
    return value


# Checked before the base settings run, so that they never write a generated
# key file for a production site.
_require("VIEWBOX_SECRET_KEY", _MIN_KEY_LENGTH)
_require("VIEWBOX_ICODE_KEY", _MIN_KEY_LENGTH)
_require("VIEWBOX_AUDIT_KEY", _MIN_KEY_LENGTH)
_require("VIEWBOX_ALLOWED_HOSTS")

from viewbox.settings import *  # noqa: E402, F403
from viewbox.settings import PROXY_COUNT  # noqa: E402

DEBUG = False
DEMO_MAILBOX = False

HTTPS = True
SECURE_SSL_REDIRECT = True
if PROXY_COUNT > 0:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = 365 * 24 * 60 * 60
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True

# A "__Host-" cookie is accepted by browsers only when it is Secure, has
# Path=/ and no Domain, so a sibling subdomain cannot set or shadow it.
SESSION_COOKIE_NAME = "__Host-session"
SESSION_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_DOMAIN = None
SESSION_COOKIE_PATH = "/"
CSRF_COOKIE_NAME = "__Host-csrftoken"
CSRF_COOKIE_SECURE = True
CSRF_COOKIE_HTTPONLY = True
CSRF_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_DOMAIN = None
CSRF_COOKIE_PATH = "/"
LANGUAGE_COOKIE_NAME = "__Host-language"
LANGUAGE_COOKIE_SECURE = True
LANGUAGE_COOKIE_HTTPONLY = True
LANGUAGE_COOKIE_SAMESITE = "Lax"
LANGUAGE_COOKIE_PATH = "/"

# security.W003 looks for Django's CsrfViewMiddleware by its dotted path.
# MIDDLEWARE contains viewbox.viewer.middleware.FetchMetadataCsrfMiddleware,
# a subclass that checks the token in every case, and a test asserts that it
# is there.
SILENCED_SYSTEM_CHECKS = ["security.W003"]
