"""At most a few HTTP requests in Django's hands at once; the rest wait on the loop.

Django's ASGI handler runs each request's sync parts (middleware, ORM calls) on a
thread of its own. A burst (a thousand people pressing send within a second) then
means a thousand threads contending for the GIL, each with its own database
connection, and everyone's reply starting late. Here a waiting request costs a
coroutine until a place is free, and requests are served in the order they came.
A request gives its place up when its response starts, so a stream that stays
open for minutes holds none.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

Scope = dict[str, Any]


class AdmissionLimit:
    """ASGI middleware: ``limit`` HTTP requests at a time (0: no limit)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit
        self._places: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.limit <= 0:
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        places = self._places.get(loop)
        if places is None:
            places = self._places[loop] = asyncio.Semaphore(self.limit)
        await places.acquire()
        held = True

        def give_up() -> None:
            nonlocal held
            if held:
                held = False
                places.release()

        async def send_and_give_up(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                give_up()
            await send(message)

        try:
            await self.app(scope, receive, send_and_give_up)
        finally:
            give_up()
