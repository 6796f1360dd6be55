"""Settings for server processes under test: the demo project's, from the environment,
plus a recorder of ``reply_finished`` and test-sized intervals."""

from __future__ import annotations

import os

from project.settings import *  # noqa: F403
from project.settings import CHATSTREAM, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.recorder"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
CHATSTREAM = {
    **CHATSTREAM,
    "CHECKPOINT_INTERVAL": float(os.environ.get("TEST_CHECKPOINT_INTERVAL", "0.2")),
    "KEEPALIVE_INTERVAL": float(os.environ.get("TEST_KEEPALIVE_INTERVAL", "1")),
    "FLUSH_INTERVAL": float(os.environ.get("TEST_FLUSH_INTERVAL", "0.02")),
    "FLUSH_INTERVAL_MAX": float(os.environ.get("TEST_FLUSH_INTERVAL_MAX", "0")),
    "LOG_TTL": float(os.environ.get("TEST_LOG_TTL", "600")),
    "MESSAGES_PER_MINUTE": 10000,
    "MAX_CONCURRENT_REPLIES": 1000,
}

if "REPLY_LOG" in CHATSTREAM:
    CHATSTREAM["REPLY_LOG"] = {
        **CHATSTREAM["REPLY_LOG"],
        "OPTIONS": {"lease_ttl": float(os.environ.get("TEST_LEASE_TTL", "10"))},
    }
