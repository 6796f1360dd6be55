"""The event-stream response under Django's ASGI handler: a stream's request ends on one
thread that every stream shares, whichever way the stream ended."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import markcoroutinefunction
from asgiref.testing import ApplicationCommunicator
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_finished
from django.http import HttpRequest, HttpResponse
from django.test import override_settings
from django.urls import path

from chatstream.http import EventStreamResponse
from tests.asgi_request import asgi, http_scope


async def _three() -> AsyncIterator[bytes]:
    for n in range(3):
        yield f"data: {n}\n\n".encode()
        await asyncio.sleep(0)


#: Each time an ``endless`` stream's generator was closed.
closed: list[str] = []


async def _until_gone() -> AsyncIterator[bytes]:
    try:
        yield b"data: first\n\n"
        await asyncio.Event().wait()
    finally:
        closed.append("endless")


async def stream(request: HttpRequest) -> EventStreamResponse:
    return EventStreamResponse(_three())  # type: ignore[arg-type]


async def endless(request: HttpRequest) -> EventStreamResponse:
    return EventStreamResponse(_until_gone())  # type: ignore[arg-type]


async def plain(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"plain")


urlpatterns = [path("stream/", stream), path("endless/", endless), path("plain/", plain)]


def shouting(get_response: Any) -> Any:
    """A middleware that wraps a streaming response's content, as compressing ones do."""

    async def middleware(request: HttpRequest) -> Any:
        response = await get_response(request)
        if response.streaming:
            inner = response.streaming_content

            async def upper() -> AsyncIterator[bytes]:
                async for part in inner:
                    yield part.upper()

            response.streaming_content = upper()
        return response

    return markcoroutinefunction(middleware)


shouting.async_capable = True  # type: ignore[attr-defined]
shouting.sync_capable = False  # type: ignore[attr-defined]


async def _get(handler: ASGIHandler, path: str) -> bytes:
    status, _, body = await asgi(handler, "GET", path)
    assert status == 200
    return body


@pytest.fixture
def finished_on() -> Any:
    """The name of the thread each ``request_finished`` ran on."""
    names: list[str] = []

    def record(**kwargs: Any) -> None:
        names.append(threading.current_thread().name)

    request_finished.connect(record)
    yield names
    request_finished.disconnect(record)


@pytest.fixture
def thread_starts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    started: list[str] = []
    start = threading.Thread.start

    def counted(self: threading.Thread) -> None:
        started.append(self.name)
        start(self)

    monkeypatch.setattr(threading.Thread, "start", counted)
    return started


@override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=[])
async def test_a_finished_stream_ends_on_the_shared_thread_and_starts_fewer(
    finished_on: list[str], thread_starts: list[str]
) -> None:
    handler = ASGIHandler()
    await _get(handler, "/stream/")  # the shared thread starts once, here or earlier
    started = {}
    for name in ("plain", "stream"):
        thread_starts.clear()
        finished_on.clear()
        body = await _get(handler, f"/{name}/")
        started[name] = len(thread_starts)
        if name == "stream":
            assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
            assert len(finished_on) == 1 and finished_on[0].startswith("chatstream-close")
        else:
            assert finished_on == [finished_on[0]] and not finished_on[0].startswith("chatstream")
    # A plain response's request starts its own thread and one to join it at the end; a
    # stream's lets its own go while it streams, and ends on the shared one.
    assert started["stream"] < started["plain"], started


@override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=[])
async def test_a_stream_the_client_left_ends_on_it_too_and_it_stays_up(
    finished_on: list[str],
) -> None:
    handler = ASGIHandler()
    communicator = ApplicationCommunicator(handler, http_scope("GET", "/endless/"))
    await communicator.send_input({"type": "http.request", "body": b""})
    assert (await communicator.receive_output(10))["status"] == 200
    assert (await communicator.receive_output(10))["body"] == b"data: first\n\n"
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(10)
    assert len(finished_on) == 1 and finished_on[0].startswith("chatstream-close")

    # asgiref handed the shared executor back to be shut down as that request ended.
    finished_on.clear()
    assert await _get(handler, "/stream/") == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert len(finished_on) == 1 and finished_on[0].startswith("chatstream-close")


@pytest.mark.parametrize("wrapped", [False, True])
async def test_a_stream_is_served_as_middleware_left_it_and_closed(
    wrapped: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unwrapped, the view's own generator is streamed (no per-part wrapping by Django);
    wrapped, what the middleware made of it. Either way the view's generator is closed."""
    wrapped_parts: list[bytes] = []
    make_bytes = EventStreamResponse.make_bytes

    def counted(self: EventStreamResponse, value: Any) -> bytes:
        wrapped_parts.append(value)
        return make_bytes(self, value)

    monkeypatch.setattr(EventStreamResponse, "make_bytes", counted)
    middleware = [f"{__name__}.shouting"] if wrapped else []
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=middleware):
        handler = ASGIHandler()
        body = await _get(handler, "/stream/")
        closed.clear()
        communicator = ApplicationCommunicator(handler, http_scope("GET", "/endless/"))
        await communicator.send_input({"type": "http.request", "body": b""})
        assert (await communicator.receive_output(10))["status"] == 200
        first = (await communicator.receive_output(10))["body"]
        await communicator.send_input({"type": "http.disconnect"})
        await communicator.wait(10)
    expected = b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert body == (expected.upper() if wrapped else expected)
    assert first == (b"DATA: FIRST\n\n" if wrapped else b"data: first\n\n")
    assert bool(wrapped_parts) == wrapped
    assert closed == ["endless"]
