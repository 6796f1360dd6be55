"""The project's admission limit: a few requests in Django at once, streams first and
holding no place once they stream."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from project.admission import AdmissionLimit, _Places


class App:
    """An ASGI app whose requests wait for the test to let them start or finish."""

    def __init__(self) -> None:
        self.inside = 0
        self.most_inside = 0
        self.order: list[int] = []
        self.release = asyncio.Event()
        self.stream_ends = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            self.order.append(scope["n"])
            if scope.get("fail"):
                raise RuntimeError("the view failed")
            if scope.get("stream"):
                await send({"type": "http.response.start", "status": 200})
                await self.stream_ends.wait()
                return
            await self.release.wait()
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": b"ok"})
        finally:
            self.inside -= 1


async def call(app: AdmissionLimit, n: int, **scope: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "n": n, **scope}, None, send)
    return sent


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_at_most_limit_requests_inside_served_in_order() -> None:
    inner = App()
    app = AdmissionLimit(inner, 2)
    calls = [asyncio.ensure_future(call(app, n)) for n in range(6)]
    await settle()
    assert inner.inside == 2 and inner.order == [0, 1]
    inner.release.set()
    results = await asyncio.wait_for(asyncio.gather(*calls), timeout=10)
    assert inner.most_inside == 2
    assert inner.order == list(range(6))
    assert all(sent[-1]["body"] == b"ok" for sent in results)


async def test_a_started_stream_holds_no_place() -> None:
    inner = App()
    app = AdmissionLimit(inner, 1)
    stream = asyncio.ensure_future(call(app, 0, stream=True))
    await settle()
    inner.release.set()
    answered = await asyncio.wait_for(call(app, 1), timeout=10)  # while the stream is open
    assert answered[-1]["body"] == b"ok" and not stream.done()
    inner.stream_ends.set()
    await asyncio.wait_for(stream, timeout=10)


async def test_waiting_event_streams_go_before_other_waiting_requests() -> None:
    inner = App()
    app = AdmissionLimit(inner, 1)
    accept = [(b"accept", b"text/event-stream")]
    calls = [asyncio.ensure_future(call(app, n, method="GET")) for n in range(2)]
    # Only a GET asks for a stream: a POST saying it accepts one waits its turn.
    calls.append(asyncio.ensure_future(call(app, 2, method="POST", headers=accept)))
    await settle()
    stream = asyncio.ensure_future(call(app, 3, method="GET", stream=True, headers=accept))
    await settle()
    assert inner.order == [0]
    inner.release.set()
    await asyncio.wait_for(asyncio.gather(*calls), timeout=10)
    assert inner.order == [0, 3, 1, 2]
    inner.stream_ends.set()
    await asyncio.wait_for(stream, timeout=10)


async def test_a_cancelled_waiter_loses_no_place() -> None:
    places = _Places(1)
    await places.take(stream=False)
    waiter = asyncio.ensure_future(places.take(stream=False))
    await settle()
    waiter.cancel()
    await settle()
    places.give_back()
    assert places.free == 1 and not any(places.waiting)


async def test_a_place_given_to_a_waiter_cancelled_meanwhile_is_passed_on() -> None:
    places = _Places(1)
    await places.take(stream=False)
    first = asyncio.ensure_future(places.take(stream=False))
    second = asyncio.ensure_future(places.take(stream=True))
    await settle()
    places.give_back()  # to the stream
    second.cancel()  # before it could run
    await settle()
    assert first.done() and not first.cancelled()
    with pytest.raises(asyncio.CancelledError):
        await second
    places.give_back()
    assert places.free == 1


async def test_a_failing_request_gives_its_place_back() -> None:
    inner = App()
    app = AdmissionLimit(inner, 1)
    with pytest.raises(RuntimeError):
        await call(app, 0, fail=True)
    inner.release.set()
    assert (await asyncio.wait_for(call(app, 1), timeout=10))[-1]["body"] == b"ok"


@pytest.mark.parametrize(("limit", "kind"), [(0, "http"), (1, "websocket")])
async def test_no_limit_and_websockets_pass_straight_through(limit: int, kind: str) -> None:
    inner = App()
    app = AdmissionLimit(inner, limit)
    calls = [asyncio.ensure_future(app({"type": kind, "n": n}, None, _ignore)) for n in range(3)]
    await settle()
    assert inner.inside == 3
    inner.release.set()
    await asyncio.wait_for(asyncio.gather(*calls), timeout=10)


async def _ignore(message: dict[str, Any]) -> None:
    pass


@pytest.mark.parametrize("path", ["/api/health/", "/static/chatstream/chat.js"])
async def test_health_probes_and_static_files_never_wait_for_a_place(path: str) -> None:
    inner = App()
    app = AdmissionLimit(inner, 1)
    held = asyncio.ensure_future(call(app, 0, path="/api/conversations/"))
    waiting = asyncio.ensure_future(call(app, 1, path="/api/conversations/"))
    await settle()
    assert inner.order == [0]  # every place taken, one request queued
    probe = asyncio.ensure_future(call(app, 2, path=path))
    await settle()
    assert inner.order == [0, 2] and not waiting.done()  # in past the queue
    inner.release.set()
    await asyncio.wait_for(asyncio.gather(held, waiting, probe), timeout=10)
    assert inner.order == [0, 2, 1]
