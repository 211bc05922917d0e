"""Settings for Viewbox.

Everything an operator changes comes from the environment:

    VIEWBOX_DATABASE_URL   sqlite:////abs/path/db.sqlite3 (default: var/db.sqlite3)
                           or postgres://user@host:port/name
    VIEWBOX_DATA_DIR       where the database, stored files and keys live (var/)
    VIEWBOX_SECRET_KEY     Django's secret key (default: generated into DATA_DIR)
    VIEWBOX_ICODE_KEY      key of the keyed hash that stores I-Codes
    VIEWBOX_DEBUG          "1" to show Django's debug pages (never in production)
    VIEWBOX_ALLOWED_HOSTS  comma-separated host names served (default: local only)
"""

import os
import secrets
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.utils.translation import gettext_lazy as _

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


def _database_from_url(url: str) -> dict[str, object]:
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": unquote(parts.path) or str(DATA_DIR / "db.sqlite3"),
            # Web workers and the task worker write to one file; wait for the
            # lock instead of failing at once, and take it when the
            # transaction starts so two writers do not deadlock on upgrade.
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
            "TEST": {"NAME": os.environ.get("VIEWBOX_TEST_SQLITE_NAME")},
        }
    if parts.scheme in ("postgres", "postgresql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")) or "viewbox",
            "USER": unquote(parts.username or "postgres"),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "127.0.0.1",
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
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_tasks_db",
    "viewbox.directory",
    "viewbox.records",
    "viewbox.access",
    "viewbox.audit",
    "viewbox.ingest",
    "viewbox.viewer",
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
]

ROOT_URLCONF = "viewbox.urls"
WSGI_APPLICATION = "viewbox.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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
LANGUAGES = [("en", _("English")), ("es", _("Spanish"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
USE_I18N = True
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
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "no-referrer"
X_FRAME_OPTIONS = "DENY"

# Signed reports wait this many hours after signing and sending to the
# referring physician before the patient sees them, by the US state of the
# location that did the exam. States not listed release at once.
REPORT_HOLD_HOURS_BY_STATE = {"CA": 96, "TX": 96}

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

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "INFO"},
    # Django's request logger repeats the URL of every 404; ours carry no
    # health information, but a 404 is also what refused access looks like,
    # and that is logged once by the access module.
    "loggers": {"django.request": {"level": "ERROR"}},
}
