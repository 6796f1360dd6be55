"""The layers under chatstream, each streaming with nothing else to do.

The ``floors`` scenario of ``bench/run.py`` measures what an open stream, and a
relayed token, cost in each: what no relay built on them can go below. Every
stream sends its headers and a first event; then, by the query string, it waits
until the client hangs up (``events=0``), or sends ``events`` delta events at
``rate`` a second, each when a timer fires or, with ``upstream=1``, when the
model's server sends the token, and a ``done`` event.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from bench.upstream import prompt, token
from chatstream.connections import get_provider
from chatstream.http import release_request_thread
from chatstream.providers.base import ChatRequest

_FIRST = b"event: ping\ndata: {}\n\n"
_DONE = b'event: done\ndata: {"status": "complete"}\n\n'
_IDLE_UPSTREAM_DELAY = 600.0  # seconds: an idle stream's model never answers


def _delta(offset: int, text: str) -> bytes:
    return f"id: {offset}\nevent: delta\ndata: {json.dumps({'text': text})}\n\n".encode()


async def _paced(count: int, rate: float) -> AsyncIterator[bytes]:
    """``count`` deltas, token ``i`` due at ``start + i / rate``, as bench/upstream.py does."""
    loop = asyncio.get_running_loop()
    start, offset = loop.time(), 0
    for index in range(count):
        await asyncio.sleep(max(0.0, start + index / rate - loop.time()))
        offset += len(token(index))
        yield _delta(offset, token(index))


async def _relayed(count: int, rate: float) -> AsyncIterator[bytes]:
    """The model's tokens through chatstream's provider, one delta each: no log, no saving."""
    text = prompt(count, rate) if count else prompt(1, 0, _IDLE_UPSTREAM_DELAY)
    model = os.environ.get("CHATSTREAM_MODEL", "bench-model")
    request = ChatRequest(model=model, messages=[{"role": "user", "content": text}])
    offset = 0
    async for chunk in get_provider("default").stream(request):
        if chunk.text:
            offset += len(chunk.text)
            yield _delta(offset, chunk.text)


async def asgi_application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The server's own share: no framework at all (timer-paced only)."""
    if scope["type"] != "http":
        return
    query = parse_qs(scope["query_string"].decode())
    count, rate = int(query.get("events", ["0"])[0]), float(query.get("rate", ["20"])[0])
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": _FIRST, "more_body": True})
    if not count:
        while (await receive())["type"] != "http.disconnect":
            pass
        return
    async for frame in _paced(count, rate):
        await send({"type": "http.response.body", "body": frame, "more_body": True})
    await send({"type": "http.response.body", "body": _DONE})


async def _events(release: bool, upstream: bool, count: int, rate: float) -> AsyncIterator[bytes]:
    if release:
        release_request_thread()
    yield _FIRST
    if upstream:
        async for frame in _relayed(count, rate):
            yield frame
    elif count:
        async for frame in _paced(count, rate):
            yield frame
    if not count:
        await asyncio.Event().wait()  # cancelled by Django when the client hangs up
    yield _DONE


async def django_stream(request: HttpRequest) -> HttpResponse:
    """``release=1``: without the idle worker thread; ``upstream=1``: tokens from the model."""
    events = _events(
        "release" in request.GET,
        "upstream" in request.GET,
        int(request.GET.get("events", 0)),
        float(request.GET.get("rate", 20)),
    )
    return StreamingHttpResponse(events, content_type="text/event-stream")
