"""Database work of generations, on a few threads whatever the number of replies.

A reply streams for minutes. Had each generation kept the thread of its first
checkpoint (and, through it, a database connection) to the end, a thousand
concurrent replies would hold a thousand threads and a thousand connections:
far past PostgreSQL's ``max_connections``. Checkpoints run here instead, each
treated like a request: the connection is checked before and released after,
as ``CONN_MAX_AGE`` says.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

T = TypeVar("T")

#: Threads, and so at most this many connections per process for checkpoints.
POOL_SIZE = 4

_executor = ThreadPoolExecutor(max_workers=POOL_SIZE, thread_name_prefix="chatstream-db")


def _unit(fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    close_old_connections()
    try:
        return fn(*args)
    finally:
        close_old_connections()


async def run(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on the pool, with a request's connection discipline."""
    return await sync_to_async(_unit, thread_sensitive=False, executor=_executor)(fn, args)
