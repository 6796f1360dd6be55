"""The layers under chatstream, each holding an open stream and doing nothing else.

``bench/idle_floor.py`` measures what one open stream costs in each: what no relay
built on them can go below. Every view sends its headers and one event, then
waits for the client to hang up.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from chatstream.connections import get_provider
from chatstream.http import release_request_thread
from chatstream.providers.base import ChatRequest

_EVENT = b"event: ping\ndata: {}\n\n"
#: An upstream reply that starts in ten minutes: the stream stays open and idle.
_WAITING_PROMPT = "bench tokens=1 rate=0 delay=600"


async def asgi_application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The server's own share: no framework at all."""
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": _EVENT, "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass


async def _wait(release: bool, upstream: bool) -> AsyncIterator[bytes]:
    if release:
        release_request_thread()
    yield _EVENT
    if upstream:
        request = ChatRequest(
            model=os.environ.get("CHATSTREAM_MODEL", "bench-model"),
            messages=[{"role": "user", "content": _WAITING_PROMPT}],
        )
        async for _ in get_provider("default").stream(request):
            pass
    await asyncio.Event().wait()  # cancelled by Django when the client hangs up


async def django_stream(request: HttpRequest) -> HttpResponse:
    """``?release=1``: without the idle worker thread; ``?upstream=1``: an open SDK stream."""
    release, upstream = "release" in request.GET, "upstream" in request.GET
    return StreamingHttpResponse(_wait(release, upstream), content_type="text/event-stream")
