"""Settings for the benchmark's server processes: the demo project's, plus a counter
of database writes and the baseline relay's URL.

Writes are counted for real: every new database connection gets an
``execute_wrapper`` that counts INSERT/UPDATE/DELETE statements by table, and
``GET /bench/stats/`` reports the counts.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from typing import Any

from django.db.backends.signals import connection_created

from project.settings import *  # noqa: F403
from project.settings import CHATSTREAM

ROOT_URLCONF = "bench.urls"
# Plain HTTP on 127.0.0.1: in production TLS ends at the proxy in front.
SECURE_SSL_REDIRECT = False
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = False
SECURE_HSTS_SECONDS = 0
# No collectstatic for a benchmark: plain static storage.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# The production defaults for intervals; only the per-owner limits are lifted, since
# the load client is a few owners opening hundreds of streams.
CHATSTREAM = {**CHATSTREAM, "MESSAGES_PER_MINUTE": 0, "MAX_CONCURRENT_REPLIES": 0}
if os.environ.get("BENCH_PACING") == "off":  # the "chatstream, pacing off" variant
    CHATSTREAM["FLUSH_INTERVAL_MAX"] = 0

WRITES: Counter[str] = Counter()
_WRITES_LOCK = threading.Lock()
_WRITE = re.compile(r'^\s*(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM|REPLACE\s+INTO)\s+"?(\w+)', re.I)


def _count_writes(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    match = _WRITE.match(sql)
    if match:
        with _WRITES_LOCK:
            WRITES[match.group(1)] += len(params) if many else 1
    return execute(sql, params, many, context)


def _install_counter(sender: Any, connection: Any, **kwargs: Any) -> None:
    if _count_writes not in connection.execute_wrappers:
        connection.execute_wrappers.append(_count_writes)


connection_created.connect(_install_counter, dispatch_uid="bench_count_writes")
