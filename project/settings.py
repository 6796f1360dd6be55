"""The demo project's settings, all from the environment (see README: Settings).

With nothing set it runs on the embedded defaults: SQLite, the in-process reply
log and the offline demo model.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG")
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("Set DJANGO_SECRET_KEY (or DJANGO_DEBUG=1 for a local trial).")
    SECRET_KEY = "insecure-local-trial-key-only-for-DEBUG"  # noqa: S105
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")
# HTTP requests in Django's hands at once per process (project/admission.py); 0: no limit.
MAX_ACTIVE_REQUESTS = int(os.environ.get("DJANGO_MAX_ACTIVE_REQUESTS", "64"))
# New objects between two runs of the cyclic garbage collector (project/asgi.py); 0: Python's.
GC_THRESHOLD = int(os.environ.get("DJANGO_GC_THRESHOLD", "10000"))
# The bearer token Prometheus sends to /metrics; unset: only staff sessions may see them.
METRICS_TOKEN = os.environ.get("CHATSTREAM_METRICS_TOKEN", "")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "chatstream",
]

# Django's Security, CSRF and X-Frame-Options by Django's path (its deploy checks look
# for them so); under ASGI project.middleware.ASGIHandler runs them on the event loop.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "project.middleware.WhiteNoiseMiddleware",
    "project.middleware.SessionMiddleware",
    "project.middleware.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "project.middleware.AuthenticationMiddleware",
    "project.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

_SQLITE_PATH = BASE_DIR / "db" / "chatstream.sqlite3"
DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{_SQLITE_PATH}", conn_max_age=0, conn_health_checks=True
    )
}
# PostgreSQL: Django's connection pool (psycopg_pool). Without it every request, and
# every thread-sensitive context under ASGI, opens a connection of its own.
DB_POOL_SIZE = int(os.environ.get("DJANGO_DB_POOL_SIZE", "16"))
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and DB_POOL_SIZE > 0:
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": DB_POOL_SIZE,
        "timeout": 20,  # seconds a request waits for a connection before failing
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # Concurrent readers and one writer without "database is locked" errors.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "chatstream-cache",
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
    # Sessions read from Redis, kept in the database, and still served when Redis is down.
    SESSION_ENGINE = "project.sessions"
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            # Per-owner limit counters live here: room for more than 300 owners.
            "OPTIONS": {"MAX_ENTRIES": 20_000},  # type: ignore[dict-item]  # Django takes ints
        }
    }
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    # Sessions in the database, their row read with a query compiled once.
    SESSION_ENGINE = "project.database_sessions"


def _connections() -> dict[str, dict]:
    model = os.environ.get("CHATSTREAM_MODEL", "")
    connections: dict[str, dict] = {}
    if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"):
        options = {
            key: os.environ[var]
            for key, var in (("api_key", "OPENAI_API_KEY"), ("base_url", "OPENAI_BASE_URL"))
            if os.environ.get(var)
        }
        connections["openai"] = {
            "BACKEND": "chatstream.providers.openai.OpenAIProvider",
            "OPTIONS": options,
            "MODEL": model,
        }
    if os.environ.get("AZURE_OPENAI_ENDPOINT"):
        options = {"azure_endpoint": os.environ["AZURE_OPENAI_ENDPOINT"]}
        if os.environ.get("AZURE_OPENAI_API_KEY"):
            options["api_key"] = os.environ["AZURE_OPENAI_API_KEY"]
        if os.environ.get("OPENAI_API_VERSION"):
            options["api_version"] = os.environ["OPENAI_API_VERSION"]
        connections["azure"] = {
            "BACKEND": "chatstream.providers.openai.AzureOpenAIProvider",
            "OPTIONS": options,
            "MODEL": model,
        }
    demo = {"BACKEND": "chatstream.providers.demo.DemoProvider", "OPTIONS": {}, "MODEL": ""}
    real = next(iter(connections.values()), None)
    # With no real model the offline demo "thinks" first, to show the thinking block.
    connections["default"] = real or {**demo, "OPTIONS": {"reasoning": True}}
    connections["demo"] = demo
    return connections


CHATSTREAM = {
    "CONNECTIONS": _connections(),
    "ALLOW_ANONYMOUS": env_bool("CHATSTREAM_ALLOW_ANONYMOUS", DEBUG),
}
if REDIS_URL:
    CHATSTREAM["REPLY_LOG"] = {
        "BACKEND": "chatstream.replylog.redis.RedisReplyLog",
        "LOCATION": REDIS_URL,
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
if DEBUG:
    STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

if not DEBUG:
    # HTTPS everywhere by default: `manage.py check --deploy` is clean with these.
    SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    # Load balancers probe, and Prometheus scrapes each worker, over plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^api/health/$", r"^metrics$"]
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", "3600"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", True)
if env_bool("DJANGO_BEHIND_PROXY"):
    # nginx (or another proxy) terminates TLS and says so in X-Forwarded-Proto.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    USE_X_FORWARDED_HOST = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("DJANGO_LOG_LEVEL", "INFO")},
}
