"""Settings for the in-process tests: the demo project's, made fast and deterministic."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-secret-key")

from project.settings import *  # noqa: E402, F403

# A database named by TEST_DATABASE_URL (PostgreSQL in CI) or SQLite.
if os.environ.get("TEST_DATABASE_URL"):
    import dj_database_url  # noqa: E402

    DATABASES = {"default": dj_database_url.parse(os.environ["TEST_DATABASE_URL"])}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
CHATSTREAM = {
    "CONNECTIONS": {
        "default": {
            "BACKEND": "chatstream.providers.demo.DemoProvider",
            "OPTIONS": {"first_token_delay": 0, "tokens_per_second": 0},
        },
    },
    "ALLOW_ANONYMOUS": True,
    "FLUSH_INTERVAL": 0,
    "FLUSH_INTERVAL_MAX": 0,  # frames as FLUSH_INTERVAL says, however loaded the machine
    "KEEPALIVE_INTERVAL": 5,
    "MESSAGES_PER_MINUTE": 1000,
    "MAX_CONCURRENT_REPLIES": 100,
    "SWEEP_INTERVAL": 0,  # no sweep in the test's own loop; the live tests have theirs
}
MIDDLEWARE = [m for m in MIDDLEWARE if "WhiteNoise" not in m]  # noqa: F405 (no static here)

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # A file, not shared-cache memory: its table locks fail at once instead of waiting,
    # and generations write from their own threads.
    import tempfile  # noqa: E402

    DATABASES["default"]["TEST"] = {  # noqa: F405
        "NAME": os.path.join(tempfile.gettempdir(), f"chatstream-tests-{os.getpid()}.sqlite3")
    }
SECURE_SSL_REDIRECT = False  # the test client speaks plain HTTP
