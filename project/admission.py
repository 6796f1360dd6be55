"""At most a few HTTP requests in Django's hands at once; the rest wait on the loop.

Django's ASGI handler runs each request's sync parts (middleware, ORM calls) on a
thread of its own. A burst (a thousand people pressing send within a second) then
means a thousand threads contending for the GIL, each with its own database
connection, and everyone's reply starting late. Here a waiting request costs a
coroutine until a place is free. A request gives its place up when its response
starts, so a stream that stays open for minutes holds none.

Event streams (a GET with ``Accept: text/event-stream``, as every EventSource
sends) go first: their message is stored and its reply running, and a live stream's
request is cheap, so in a burst people already served see their reply start rather
than waiting behind every send that came after theirs. The rest go in arrival order.

A Prometheus scrape (``/metrics``) never waits: it must be able to show the very
queue it would be waiting in.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import deque
from typing import Any

from chatstream import metrics

Scope = dict[str, Any]

# Let in without a place: probes and scrapes must answer during the very bursts they
# watch (a load balancer that times out its health probe takes a healthy worker out),
# and static files cost no database and no thread.
_BYPASS = frozenset({"/metrics", "/api/health/"})
_BYPASS_PREFIXES = ("/static/",)


class _Places:
    """``count`` places; a freed place goes to the first waiting stream, else the first waiter."""

    def __init__(self, count: int) -> None:
        self.free = count
        self.waiting: tuple[deque[asyncio.Future[None]], ...] = (deque(), deque())

    async def take(self, stream: bool) -> None:
        if self.free > 0 and not any(self.waiting):
            self.free -= 1
            metrics.ADMISSION_WAIT.observe(0)
            return
        queue = self.waiting[0 if stream else 1]
        place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(place)
        try:
            with metrics.ADMISSION_QUEUE.track_inprogress(), metrics.ADMISSION_WAIT.time():
                await place
        except asyncio.CancelledError:
            if place.done() and not place.cancelled():
                self.give_back()  # given a place while being cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(place)
            raise

    def give_back(self) -> None:
        for queue in self.waiting:
            while queue:
                place = queue.popleft()
                if not place.done():
                    place.set_result(None)
                    return
        self.free += 1


def _wants_event_stream(scope: Scope) -> bool:
    return scope.get("method") == "GET" and any(
        name == b"accept" and b"text/event-stream" in value
        for name, value in scope.get("headers", ())
    )


class AdmissionLimit:
    """ASGI middleware: ``limit`` HTTP requests at a time (0: no limit)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit
        self._places: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Places] = (
            weakref.WeakKeyDictionary()
        )

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or self.limit <= 0
            or path in _BYPASS
            or path.startswith(_BYPASS_PREFIXES)
        ):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        places = self._places.get(loop)
        if places is None:
            places = self._places[loop] = _Places(self.limit)
        await places.take(stream=_wants_event_stream(scope))
        held = True

        def give_up() -> None:
            nonlocal held
            if held:
                held = False
                places.give_back()

        async def send_and_give_up(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                give_up()
            await send(message)

        try:
            await self.app(scope, receive, send_and_give_up)
        finally:
            give_up()
