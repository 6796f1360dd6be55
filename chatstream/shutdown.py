"""Graceful SIGTERM/SIGINT: finalise in-flight replies as ``interrupted``, then exit.

Neither Daphne nor Django gives an app a shutdown hook for free-standing tasks
(Daphne has no ASGI lifespan), so this chains in front of whatever handler the
server installed, runs the registry's shutdown on the event loop, and then calls
that handler so the server stops as it would have.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

_installed = False


def install(shutdown: Callable[[], Any]) -> None:
    """Install once, from the loop's (main) thread; ``shutdown`` is a coroutine function."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    _installed = True
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)

        def handler(num: int, frame: Any, previous: Any = previous) -> None:
            logger.info("Signal %s: finalising in-flight replies before exit.", num)
            loop.call_soon_threadsafe(_spawn, loop, shutdown, num, frame, previous)

        signal.signal(signum, handler)


_pending: set[asyncio.Task[None]] = set()


def _spawn(loop: asyncio.AbstractEventLoop, shutdown: Callable[[], Any], *args: Any) -> None:
    task = loop.create_task(_shutdown_then_chain(shutdown, *args))
    _pending.add(task)  # owned here until done: the process is ending with it
    task.add_done_callback(_pending.discard)


async def _shutdown_then_chain(
    shutdown: Callable[[], Any], num: int, frame: Any, previous: Any
) -> None:
    try:
        await shutdown()
    finally:
        if callable(previous):
            previous(num, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(num, signal.SIG_DFL)
            os.kill(os.getpid(), num)
