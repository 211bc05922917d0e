"""Settings for Viewbox.

Everything an operator changes comes from the environment:

    VIEWBOX_DATABASE_URL   sqlite:////abs/path/db.sqlite3 (default: var/db.sqlite3)
                           or postgres://user@host:port/name
    VIEWBOX_DATA_DIR       where the database, stored files and keys live (var/)
    VIEWBOX_SECRET_KEY     Django's secret key (default: generated into DATA_DIR)
    VIEWBOX_ICODE_KEY      key of the keyed hash that stores I-Codes
    VIEWBOX_DEBUG          "1" to show Django's debug pages (never in production)
    VIEWBOX_ALLOWED_HOSTS  comma-separated host names served (default: local only)
    VIEWBOX_EMAIL_HOST     SMTP server for outgoing mail (default: 127.0.0.1)
    VIEWBOX_EMAIL_PORT     its port (default: 25)
    VIEWBOX_EMAIL_FROM     sender address of the portal's emails
    VIEWBOX_DEMO_MAILBOX   "1" to show the demo's mailbox page (never in production)
    VIEWBOX_HTTPS          "1" when served over HTTPS: secure cookies, HSTS, redirects
    VIEWBOX_PROXY_COUNT    reverse proxies in front of the web server (default: 0);
                           the client address is then read from X-Forwarded-For
    VIEWBOX_LOG_FILE       also write the application's log to this file
"""

import os
import secrets
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("VIEWBOX_DATA_DIR", BASE_DIR / "var")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)


def _read_or_create_key(env_name: str, file_name: str) -> str:
    """Return the key from the environment, or from a file made on first use."""
    if value := os.environ.get(env_name):
        return value
    path = DATA_DIR / file_name
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def _int_from_env(
    env_name: str, default: int, minimum: int, maximum: int | None = None
) -> int:
    """Return the whole number in env_name, or default when it is unset or empty.

    Raise ImproperlyConfigured, which manage.py prints as one line, for a
    value that is not a whole number from minimum to maximum. Without the
    check, int() or the code that uses the value fails with a traceback.
    """
    value = os.environ.get(env_name, "")
    if not value:
        return default
    if maximum is None:
        allowed = f"a whole number of {minimum} or more"
    else:
        allowed = f"a whole number from {minimum} to {maximum}"
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"Invalid {env_name}={value!r}: not a whole number. Set it to {allowed}."
        ) from None
    if number < minimum or (maximum is not None and number > maximum):
        raise ImproperlyConfigured(
            f"Invalid {env_name}={value!r}: out of range. Set it to {allowed}."
        )
    return number


# TCP ports. A listener bound to port 0 takes any free port and prints it.
_PORT_MAX = 65535


def _database_from_url(url: str) -> dict[str, object]:
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": unquote(parts.path) or str(DATA_DIR / "db.sqlite3"),
            # Web workers and the task worker write to one file. They wait for
            # the lock instead of failing at once, and take it when the
            # transaction starts, so that two writers cannot deadlock.
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
            # Tests use a file, as deployments do. In an in-memory database
            # shared between threads, a read of a table that another
            # thread's open transaction writes fails at once ("database table
            # is locked") instead of waiting, which no deployment does.
            "TEST": {
                "NAME": os.environ.get("VIEWBOX_TEST_SQLITE_NAME")
                or str(DATA_DIR / "test_db.sqlite3")
            },
        }
    if parts.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")) or "viewbox",
            "USER": unquote(parts.username or "postgres"),
            "PASSWORD": unquote(parts.password or ""),
            # As in libpq's URIs, "?host=/run/postgresql" names the folder of
            # a Unix socket.
            "HOST": parse_qs(parts.query).get("host", [parts.hostname or ""])[0]
            or "127.0.0.1",
            "PORT": str(parts.port or 5432),
            "CONN_MAX_AGE": 60,
        }
    raise ValueError(
        f"VIEWBOX_DATABASE_URL has an unsupported scheme: {parts.scheme!r}"
    )


SECRET_KEY = _read_or_create_key("VIEWBOX_SECRET_KEY", "secret_key")
ICODE_HASH_KEY = _read_or_create_key("VIEWBOX_ICODE_KEY", "icode_key")
DEBUG = os.environ.get("VIEWBOX_DEBUG") == "1"
ALLOWED_HOSTS = os.environ.get("VIEWBOX_ALLOWED_HOSTS", "127.0.0.1,localhost").split(
    ","
)

INSTALLED_APPS = [
    "viewbox.frontdesk.admin_apps.StaffAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_tasks_db",
    "viewbox.directory",
    "viewbox.records",
    "viewbox.access",
    "viewbox.accounts",
    "viewbox.downloads",
    "viewbox.sharing",
    "viewbox.audit",
    "viewbox.ingest",
    "viewbox.viewer",
    "viewbox.frontdesk",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "viewbox.viewer.middleware.FetchMetadataCsrfMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "viewbox.viewer.middleware.NoStoreMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "viewbox.urls"
WSGI_APPLICATION = "viewbox.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # The admin app comes first in INSTALLED_APPS, so its templates win
        # over those in an app's templates folder. Staff-wide overrides of
        # admin templates, such as the favicon link, live here instead.
        "DIRS": [BASE_DIR / "viewbox" / "frontdesk" / "staff_templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": _database_from_url(
        os.environ.get("VIEWBOX_DATABASE_URL", f"sqlite:///{DATA_DIR / 'db.sqlite3'}")
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}

STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(DATA_DIR / "media")},
    },
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
# Quarantined input is outside the storage that serves patients on purpose:
# nothing in it has been checked, and only staff should ever read it.
QUARANTINE_DIR = DATA_DIR / "quarantine"

LANGUAGE_CODE = "en"
# Each language is offered in its own name, so a reader finds theirs.
LANGUAGES = [("en", "English"), ("es", "Español")]
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_I18N = True
FORMAT_MODULE_PATH = ["viewbox.formats"]
USE_TZ = True
TIME_ZONE = "UTC"

# Health information leaves no trace in the browser: the session cookie dies
# with the browser and the session itself after 15 minutes without a request.
SESSION_COOKIE_AGE = 15 * 60
SESSION_SAVE_EVERY_REQUEST = True
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True
CSRF_FAILURE_VIEW = "viewbox.viewer.views.csrf_failure"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "no-referrer"
X_FRAME_OPTIONS = "DENY"
# Scripts and styles come only from our own static files, never inline.
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}

# Hours that a signed report is held from the patient after signing and
# sending to the referring physician, by the US state of the location that
# did the exam. States not listed release reports at once.
REPORT_HOLD_HOURS_BY_STATE = {"CA": 96, "TX": 96}

# Passwords as current NIST guidance has them: at least 8 characters, any
# length and any Unicode above that, no composition rules, and refused when
# common, breached or built from the user's own details.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
_VALIDATORS = "django.contrib.auth.password_validation"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": f"{_VALIDATORS}.MinimumLengthValidator"},
    {"NAME": "viewbox.accounts.passwords.PersonalDetailsSimilarityValidator"},
    {"NAME": f"{_VALIDATORS}.CommonPasswordValidator"},
    {"NAME": f"{_VALIDATORS}.NumericPasswordValidator"},
]
PASSWORD_RESET_TIMEOUT = 60 * 60
LOGIN_URL = "viewer:start"

MAILERS = {
    "default": {
        "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "OPTIONS": {
            "host": os.environ.get("VIEWBOX_EMAIL_HOST", "127.0.0.1"),
            "port": _int_from_env("VIEWBOX_EMAIL_PORT", 25, 1, _PORT_MAX),
            "timeout": 10,
        },
    }
}
DEFAULT_FROM_EMAIL = os.environ.get(
    "VIEWBOX_EMAIL_FROM", "Patient Portal <portal@localhost>"
)
DEMO_MAILBOX = os.environ.get("VIEWBOX_DEMO_MAILBOX") == "1"

# Sign-up: the emailed code, and failed identity checks per client and per
# patient record.
EMAIL_CODE_VALID_MINUTES = 10
EMAIL_CODE_MAX_ATTEMPTS = 5
SIGN_UP_THROTTLE = {
    "signup-client": {"limit": 10, "window_minutes": 60},
    "signup-record": {"limit": 3, "window_minutes": 24 * 60},
}
# Emails that anyone can trigger: sign-up codes per client, and password
# reset links per client and per User ID or address asked for.
CODE_MAIL_THROTTLE = {"code-mail-client": {"limit": 10, "window_minutes": 60}}
NOTICE_MAIL_THROTTLE = {"notice-client": {"limit": 10, "window_minutes": 60}}
RESET_MAIL_THROTTLE = {
    "reset-client": {"limit": 10, "window_minutes": 60},
    "reset-account": {"limit": 3, "window_minutes": 60},
}
STAFF_LOG_IN_THROTTLE = {
    "staff-client": {"limit": 10, "window_minutes": 15},
    "staff-user": {"limit": 5, "window_minutes": 15},
}
LOG_IN_THROTTLE = {
    "login-client": {"limit": 20, "window_minutes": 15},
    "login-user": {"limit": 5, "window_minutes": 15},
}
# Sessions end after SESSION_COOKIE_AGE without a request, and in any case
# this long after sign-in.
SESSION_ABSOLUTE_SECONDS = 12 * 60 * 60

# Prepared downloads stay this long, and people are warned this long before
# they go. A package whose worker has not reported for PACKAGE_STALL_SECONDS
# is prepared again (VIEWBOX_PACKAGE_STALL_SECONDS; tests shorten it).
PACKAGE_KEEP_HOURS = 24
PACKAGE_WARN_HOURS = 2
PACKAGE_STALL_SECONDS = _int_from_env("VIEWBOX_PACKAGE_STALL_SECONDS", 300, 1)

# Share links: each SHARE_PAUSE_EVERY-th wrong password in a row pauses a
# link for SHARE_PAUSE_MINUTES, and SHARE_LOCK_AFTER of them lock it until
# the patient unlocks it. A client that keeps failing, on any links or with
# made-up tokens, is stopped as well.
SHARE_PAUSE_EVERY = 10
SHARE_PAUSE_MINUTES = 15
SHARE_LOCK_AFTER = 100
SHARE_THROTTLE = {"share-client": {"limit": 30, "window_minutes": 60}}

ICODE_VALID_DAYS = 90
# Failed I-Code sign-ins: per client address, per code, and for the whole
# portal. The portal-wide limit stops one guesser spread over many addresses.
ICODE_THROTTLE = {
    "icode-client": {"limit": 10, "window_minutes": 15},
    "icode-code": {"limit": 5, "window_minutes": 15},
    "icode-portal": {"limit": 500, "window_minutes": 60},
}

# Rendered images: the largest edge a JPEG gets, in pixels, by purpose.
RENDER_TILE_EDGE = 256
RENDER_VIEW_EDGES = (512, 1024, 2048)
RENDER_JPEG_QUALITY = 85

# Front desk: staff passwords of at least 12 characters (patients keep the
# general minimum), and the Get Help form's limit per client address, which
# counts every request because each one reaches staff.
AUTH_PASSWORD_VALIDATORS += [
    {"NAME": "viewbox.frontdesk.passwords.StaffMinimumLengthValidator"}
]
GET_HELP_THROTTLE = {"help-client": {"limit": 5, "window_minutes": 60}}

# Behind a TLS-terminating proxy, the proxy passes the scheme in
# X-Forwarded-Proto and the client in X-Forwarded-For. Both headers are
# trusted only when these settings are on.
HTTPS = os.environ.get("VIEWBOX_HTTPS") == "1"
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_HSTS_SECONDS = 365 * 24 * 60 * 60
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
PROXY_COUNT = _int_from_env("VIEWBOX_PROXY_COUNT", 0, 0)

# HL7 v2 listener (MLLP), started by `manage.py run_hl7_listener`. The RIS
# connects here; bind another address only behind a firewall or VPN.
HL7_LISTENER_HOST = os.environ.get("VIEWBOX_HL7_HOST", "127.0.0.1")
HL7_LISTENER_PORT = _int_from_env("VIEWBOX_HL7_PORT", 2575, 0, _PORT_MAX)
# A larger frame gets an AR acknowledgment and its connection is closed.
HL7_LISTENER_MAX_MESSAGE_BYTES = _int_from_env(
    "VIEWBOX_HL7_MAX_MESSAGE_BYTES", 1024 * 1024, 1
)
# A connection without data for this long is closed; the RIS reconnects.
HL7_LISTENER_IDLE_TIMEOUT_SECONDS = _int_from_env(
    "VIEWBOX_HL7_IDLE_TIMEOUT_SECONDS", 300, 1
)
HL7_LISTENER_MAX_CONNECTIONS = _int_from_env("VIEWBOX_HL7_MAX_CONNECTIONS", 16, 1)

# Images in: the DICOM receiver (C-STORE SCP, manage.py run_dicom_receiver)
# and STOW-RS (POST /dicomweb/studies). The receiver accepts associations
# only from the calling AE titles listed, and refuses to start when none is.
# STOW-RS callers send "Authorization: Bearer TOKEN"; the settings hold only
# the SHA-256 of each token (hex, comma-separated), never the token itself.
DICOM_AE_TITLE = os.environ.get("VIEWBOX_DICOM_AE_TITLE", "VIEWBOX")
DICOM_HOST = os.environ.get("VIEWBOX_DICOM_HOST", "127.0.0.1")
DICOM_PORT = _int_from_env("VIEWBOX_DICOM_PORT", 11112, 0, _PORT_MAX)
DICOM_CALLING_AE_TITLES = [
    title.strip()
    for title in os.environ.get("VIEWBOX_DICOM_CALLING_AE_TITLES", "").split(",")
    if title.strip()
]
# Associations served at once by each receiver process.
DICOM_MAX_ASSOCIATIONS = _int_from_env("VIEWBOX_DICOM_MAX_ASSOCIATIONS", 10, 1)
# Receiver processes sharing the port. One process serves its associations
# in threads, which take turns on Python's global interpreter lock. None
# lets run_dicom_receiver start two per CPU, because each process spends
# part of every store waiting for fsync. Over four associations on 2 CPUs,
# four processes stored 8% more instances per second than two on average,
# and two 10% more than one (bench/store.py, SQLite, which takes one writer
# at a time).
DICOM_RECEIVER_PROCESSES = (
    _int_from_env("VIEWBOX_DICOM_RECEIVER_PROCESSES", 1, 1)
    if os.environ.get("VIEWBOX_DICOM_RECEIVER_PROCESSES")
    else None
)
STOW_TOKEN_SHA256 = [
    digest.strip().lower()
    for digest in os.environ.get("VIEWBOX_STOW_TOKEN_SHA256", "").split(",")
    if digest.strip()
]
STOW_MAX_REQUEST_BYTES = _int_from_env("VIEWBOX_STOW_MAX_REQUEST_BYTES", 4 * 1024**3, 1)

# Audit log. Each entry's hash is keyed with AUDIT_CHAIN_KEY
# (VIEWBOX_AUDIT_KEY, or a file made in DATA_DIR on first use), so someone
# who can write to the database but lacks the key cannot rewrite the chain.
# Changing the key makes every stored entry fail `manage.py verify_audit`.
AUDIT_CHAIN_KEY = _read_or_create_key("VIEWBOX_AUDIT_KEY", "audit_key")
AUDIT_ACTIVITY_PAGE_SIZE = 25

_log_handlers = ["console"]
_handlers: dict[str, dict[str, str]] = {
    "console": {"class": "logging.StreamHandler", "formatter": "plain"}
}
if log_file := os.environ.get("VIEWBOX_LOG_FILE"):
    _handlers["file"] = {
        "class": "logging.handlers.WatchedFileHandler",
        "filename": log_file,
        "formatter": "plain",
    }
    _log_handlers.append("file")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    },
    "handlers": _handlers,
    "root": {"handlers": _log_handlers, "level": "INFO"},
    # Django's request logger repeats the URL of every 404; ours carry no
    # health information, but a 404 is also what refused access looks like,
    # and that is logged once by the access module.
    "loggers": {"django.request": {"level": "ERROR"}},
}

# Hardening: limits on input size. They guard memory and disk against
# runaway or hostile input. They are not clinical limits, so an operator
# whose modalities make larger objects raises them through the environment.
# Form posts keep Django's default limits (2.5 MB), far above the few
# kilobytes of the patient's forms. Bodies read as a stream
# (request.read()) are not limited by these.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
# Files saved through the storage (packages, previews) hold health
# information: only the service's user may read them. Django's default is
# 0o644, whatever the umask.
FILE_UPLOAD_PERMISSIONS = 0o600
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700
DATA_UPLOAD_MAX_NUMBER_FIELDS = 200
# One DICOM file, checked before it is parsed (VIEWBOX_DICOM_MAX_FILE_BYTES).
DICOM_MAX_FILE_BYTES = _int_from_env("VIEWBOX_DICOM_MAX_FILE_BYTES", 2 * 1024**3, 1)
# One HL7 message, in characters, and one file of messages, in bytes. A
# report with an embedded PDF (base64 in OBX-5) can run to megabytes.
HL7_MAX_MESSAGE_LENGTH = _int_from_env("VIEWBOX_HL7_MAX_MESSAGE_LENGTH", 8 * 1024**2, 1)
HL7_MAX_FILE_BYTES = _int_from_env("VIEWBOX_HL7_MAX_FILE_BYTES", 256 * 1024**2, 1)
