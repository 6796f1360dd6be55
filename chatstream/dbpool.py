"""Chatstream's own database work, on a few threads whatever the number of replies.

A reply streams for minutes. Had each generation kept the thread of its first
checkpoint (and, through it, a database connection) to the end, a thousand
concurrent replies would hold a thousand threads and a thousand connections:
far past PostgreSQL's ``max_connections``. Checkpoints, endings and a reply's
set-up run here instead, each unit treated like a request: the connection is
checked before and released after, as ``CONN_MAX_AGE`` says.

SQLite has no pool to release to, and under ASGI each request's thread is new,
so ``CONN_MAX_AGE`` cannot keep its connection either: a pool thread keeps its
own open, where a request would open one (the WAL pragmas) and close it (the
last close checkpoints), much of a reply's set-up CPU. Django still drops a
connection that broke or was left in a transaction.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connections

T = TypeVar("T")

#: Threads, and so at most this many connections per process for chatstream's own work.
POOL_SIZE = 4

_executor = ThreadPoolExecutor(max_workers=POOL_SIZE, thread_name_prefix="chatstream-db")


def _keep_sqlite() -> None:
    for connection in connections.all(initialized_only=True):
        if connection.vendor == "sqlite" and connection.connection is not None:
            connection.close_at = None  # never obsolete; unusable still closes it


def _unit(fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    close_old_connections()
    try:
        return fn(*args)
    finally:
        _keep_sqlite()
        close_old_connections()


async def run(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on the pool, with a request's connection discipline.

    In a copy of the caller's context that stays there: asgiref would otherwise set
    every context variable again in the caller's (a request streaming for minutes
    keeps what that allocates), and no unit's work changes one the caller needs.
    """
    context = contextvars.copy_context()
    return await sync_to_async(_unit, thread_sensitive=False, executor=_executor, context=context)(
        fn, args
    )
