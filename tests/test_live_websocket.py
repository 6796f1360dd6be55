"""The WebSocket contract end to end: a real ASGI server process, a real WebSocket client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import LiveServer, make_live_server, make_worker_pair
from tests.fake_openai import FakeOpenAI, Script
from tests.sse_client import ApiClient

TEXT_TOKENS = ["Hé", "llo ", "世界", " 👩‍👩‍👧", " and ", "🇺🇳", "!"]
TIMEOUT = 60  # other test runs share the machine's two cores


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def cookie_of(client: ApiClient) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in client.http.cookies.jar)


@contextlib.asynccontextmanager
async def websocket(
    server: LiveServer,
    conversation: str,
    client: ApiClient | None = None,
    *,
    origin: str | None = None,
    slow: bool = False,
) -> AsyncIterator[ClientConnection]:
    sock = None
    if slow:
        # A small receive window, set before connecting, so the stall reaches the server.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", server.port))
    headers = {"Cookie": cookie_of(client)} if client is not None else {}
    async with connect(
        f"ws://127.0.0.1:{server.port}/ws/conversations/{conversation}/",
        origin=origin or server.url,  # type: ignore[arg-type]
        additional_headers=headers,
        max_size=None,
        max_queue=1 if slow else 16,
        compression=None,
        proxy=None,
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
        sock=sock,
    ) as ws:
        yield ws


async def frame(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def send(ws: ClientConnection, **payload: Any) -> None:
    await ws.send(json.dumps(payload))


async def until_done(ws: ClientConnection) -> list[dict[str, Any]]:
    frames = []
    while not frames or frames[-1]["type"] != "done":
        frames.append(await frame(ws))
    return frames


async def start(ws: ClientConnection, content: str) -> dict[str, Any]:
    await send(ws, type="send", content=content)
    started = await frame(ws)
    assert started["type"] == "started", started
    return started


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f["text"] for f in frames if f["type"] == "delta")


def assert_offsets(frames: list[dict[str, Any]], start: int = 0) -> None:
    """Every delta's offset is the reply's length in code points after its text."""
    length = start
    for data in frames:
        if data["type"] == "delta":
            length += len(data["text"])
            assert data["offset"] == length


async def message(client: ApiClient, message_id: str) -> dict[str, Any]:
    response = await asyncio.to_thread(client.call, "GET", f"/api/messages/{message_id}/")
    assert response.status_code == 200
    return response.json()


async def wait_finished(client: ApiClient, message_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        stored = await message(client, message_id)
        if stored["status"] != "streaming":
            return stored
        await asyncio.sleep(0.05)
    raise TimeoutError(f"reply {message_id} did not finish")


async def upstream_closed(fake_openai: FakeOpenAI, trigger: str) -> Any:
    upstream = await asyncio.to_thread(fake_openai.wait_request, trigger, TIMEOUT)
    assert await asyncio.to_thread(upstream.ended_event.wait, TIMEOUT), "upstream never ended"
    return upstream


@pytest.fixture
def client(asgi_server: LiveServer) -> Iterator[ApiClient]:
    with asgi_server.client() as api:
        yield api


async def test_reply_streams_exact_text_with_code_point_offsets(
    asgi_server: LiveServer, fake_openai: FakeOpenAI, client: ApiClient
) -> None:
    trigger = fake_openai.script(unique("exact"), Script(tokens=TEXT_TOKENS, split_bytes=True))
    conversation = client.conversation()["id"]
    async with websocket(asgi_server, conversation, client) as ws:
        started = await start(ws, trigger)
        frames = await until_done(ws)
    reply_id = started["assistant_message"]["id"]
    full = "".join(TEXT_TOKENS)
    assert started["user_message"]["content"] == trigger
    assert text_of(frames) == full
    assert_offsets(frames)
    assert all(f["message_id"] == reply_id for f in frames)
    done = frames[-1]
    assert done["status"] == "complete"
    assert done["offset"] == len(full)
    assert done["message"]["content"] == full
    assert done["message"]["usage"] == {
        "prompt_tokens": 9,
        "completion_tokens": len(TEXT_TOKENS),
        "reasoning_tokens": None,
        "cached_tokens": None,
        "estimated": False,
    }
    stored = await message(client, reply_id)
    assert stored["content"] == full and stored["status"] == "complete"


async def test_stop_mid_reply_ends_with_done_stopped_and_closes_the_upstream(
    asgi_server: LiveServer, fake_openai: FakeOpenAI, client: ApiClient
) -> None:
    tokens = [f"w{i} " for i in range(400)]
    trigger = fake_openai.script(unique("stop"), Script(tokens=tokens, interval=0.05))
    conversation = client.conversation()["id"]
    async with websocket(asgi_server, conversation, client) as ws:
        started = await start(ws, trigger)
        first = await frame(ws)
        assert first["type"] == "delta"
        await send(ws, type="stop")
        frames = [first, *await until_done(ws)]
    upstream = await upstream_closed(fake_openai, trigger)
    assert upstream.closed_early and not upstream.completed
    done = frames[-1]
    assert done["status"] == "stopped"
    assert done["message"]["content"] == text_of(frames)
    assert 0 < len(text_of(frames)) < len("".join(tokens))
    stored = await message(client, started["assistant_message"]["id"])
    assert stored["status"] == "stopped" and stored["content"] == text_of(frames)


async def test_resume_after_reconnect_has_no_gap_or_duplicate(
    asgi_server: LiveServer, fake_openai: FakeOpenAI, client: ApiClient
) -> None:
    tokens = [f"tok{i} " for i in range(60)]
    trigger = fake_openai.script(unique("resume"), Script(tokens=tokens, interval=0.02))
    conversation = client.conversation()["id"]
    async with websocket(asgi_server, conversation, client) as ws:
        started = await start(ws, trigger)
        first = [await frame(ws) for _ in range(3)]
    offset = first[-1]["offset"]
    reply_id = started["assistant_message"]["id"]
    async with websocket(asgi_server, conversation, client) as ws:
        await send(ws, type="resume", message_id=reply_id, offset=offset)
        rest = await until_done(ws)
    assert text_of(first) + text_of(rest) == "".join(tokens)
    assert_offsets(first)
    assert_offsets(rest, start=offset)
    assert rest[-1]["status"] == "complete"


async def test_a_disconnect_leaves_the_reply_running(
    asgi_server: LiveServer, fake_openai: FakeOpenAI, client: ApiClient
) -> None:
    tokens = [f"t{i} " for i in range(40)]
    trigger = fake_openai.script(unique("leave"), Script(tokens=tokens, interval=0.02))
    conversation = client.conversation()["id"]
    async with websocket(asgi_server, conversation, client) as ws:
        started = await start(ws, trigger)
        assert (await frame(ws))["type"] == "delta"
    stored = await wait_finished(client, started["assistant_message"]["id"])
    assert stored["status"] == "complete" and stored["content"] == "".join(tokens)
    upstream = await upstream_closed(fake_openai, trigger)
    assert upstream.completed and not upstream.closed_early


async def refusal(server: LiveServer, conversation: str, client: ApiClient | None) -> Any:
    async with websocket(server, conversation, client) as ws:
        error = await frame(ws)
        with pytest.raises(ConnectionClosed) as closed:
            await frame(ws)
    return error, closed.value.rcvd.code if closed.value.rcvd else None


async def test_another_session_is_refused_exactly_like_a_missing_conversation(
    asgi_server: LiveServer, client: ApiClient
) -> None:
    conversation = client.conversation()["id"]
    with asgi_server.client() as stranger:
        stranger.conversation()  # a session with an owner id of its own
        theirs = await refusal(asgi_server, conversation, stranger)
        missing = await refusal(asgi_server, str(uuid.uuid4()), stranger)
        malformed = await refusal(asgi_server, "not-a-uuid", stranger)
    no_session = await refusal(asgi_server, conversation, None)
    expected = ({"type": "error", "code": "not_found", "message": "No such conversation."}, 4404)
    assert theirs == missing == malformed == no_session == expected


async def test_a_foreign_origin_is_refused_at_the_handshake(
    asgi_server: LiveServer, client: ApiClient
) -> None:
    conversation = client.conversation()["id"]
    with pytest.raises(InvalidStatus) as refused:
        async with websocket(asgi_server, conversation, client, origin="http://evil.example"):
            pass
    assert refused.value.response.status_code == 403


async def test_bad_frames_get_error_frames_and_the_connection_goes_on(
    asgi_server: LiveServer, client: ApiClient
) -> None:
    conversation = client.conversation()["id"]
    bad = [
        ("not json", "invalid_json"),
        (b"\x00\x01", "invalid_frame"),
        ('"a string"', "invalid_frame"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "send", "content": ["x"]}', "invalid_content"),
        ('{"type": "resume", "message_id": "nope", "offset": 0}', "not_found"),
        ('{"type": "resume", "message_id": "' + str(uuid.uuid4()) + '", "offset": 0}', "not_found"),
    ]
    async with websocket(asgi_server, conversation, client) as ws:
        codes = []
        for raw, _ in bad:
            await ws.send(raw)
            error = await frame(ws)
            assert error["type"] == "error" and error["message"]
            codes.append(error["code"])
        started = await start(ws, "still here")
        frames = await until_done(ws)
    assert codes == [code for _, code in bad]
    assert frames[-1]["status"] == "complete"
    assert text_of(frames) == "You said: still here"
    assert started["assistant_message"]["id"] == frames[-1]["message_id"]


# --- several workers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def workers(
    fake_openai: FakeOpenAI,
    redis_url: str,
    shared_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two daphne processes sharing one Redis reply log and one database."""
    workdir = tmp_path_factory.mktemp("ws-workers")
    a, b = make_worker_pair(workdir, fake_openai, redis_url, shared_database_url)
    yield a, b
    a.stop()
    b.stop()


async def test_send_on_one_worker_resume_and_stop_on_another(
    workers: tuple[LiveServer, LiveServer], fake_openai: FakeOpenAI
) -> None:
    a, b = workers
    tokens = [f"x{i} " for i in range(400)]
    trigger = fake_openai.script(unique("workers"), Script(tokens=tokens, interval=0.05))
    with a.client() as client:  # one browser session; its cookie works on either worker
        conversation = client.conversation()["id"]
        async with websocket(a, conversation, client) as ws:
            started = await start(ws, trigger)
            first = [await frame(ws) for _ in range(2)]
        reply_id, offset = started["assistant_message"]["id"], first[-1]["offset"]
        async with websocket(b, conversation, client) as ws:
            await send(ws, type="resume", message_id=reply_id, offset=offset)
            rest = [await frame(ws)]
            await send(ws, type="stop")
            rest += await until_done(ws)
        stored = await message(client, reply_id)
    upstream = await upstream_closed(fake_openai, trigger)
    assert upstream.closed_early and not upstream.completed
    assert_offsets(first)
    assert_offsets(rest, start=offset)
    assert rest[-1]["status"] == "stopped"
    assert text_of(first) + text_of(rest) == stored["content"]
    assert 0 < len(stored["content"]) < len("".join(tokens))


# --- a slow client ----------------------------------------------------------------------

BIG_TOKENS = [f"t{i:014d} " for i in range(65536)]  # 16 code points each: 1 MiB
SLOW_READERS = 4


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise LookupError(field)


@pytest.fixture(params=["daphne", "uvicorn"])
def fresh_asgi_server(
    request: pytest.FixtureRequest, fake_openai: FakeOpenAI, tmp_path: Path
) -> Iterator[LiveServer]:
    """A server of its own, so that its memory figures are this test's alone."""
    server = make_live_server(
        request.param, tmp_path / request.param, fake_openai, TEST_CHECKPOINT_INTERVAL="5"
    )
    yield server
    server.stop()


async def test_slow_clients_cost_at_most_about_the_reply_and_never_hold_up_others(
    fresh_asgi_server: LiveServer, fake_openai: FakeOpenAI
) -> None:
    """Four clients stop reading while a fast model streams 1 MiB in 65,536 tokens.

    The server's peak memory growth stays within a generous multiple of the reply
    (bench/ws_slow_client.py measures about 13 MiB with no reader at all and 16-19
    MiB with slow ones; a queue of per-token frames per client would cost several
    times that); another client meanwhile gets its whole reply; and the slow
    clients, reading again, get exactly the text in fewer frames than tokens.
    """
    server = fresh_asgi_server
    pid = server.process.pid  # type: ignore[union-attr]
    full = "".join(BIG_TOKENS)
    big = fake_openai.script(unique("big"), Script(tokens=BIG_TOKENS))
    paced_tokens = [f"p{i} " for i in range(20)]
    paced = fake_openai.script(unique("paced"), Script(tokens=paced_tokens, interval=0.02))
    with server.client() as owner, server.client() as other:
        conversation = owner.conversation()["id"]
        other_conversation = other.conversation()["id"]
        warm_up = owner.start("warm up")["assistant_message"]["id"]
        await wait_finished(owner, warm_up)
        before = memory_kib(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        async with contextlib.AsyncExitStack() as stack:
            slow = [
                await stack.enter_async_context(websocket(server, conversation, owner, slow=True))
                for _ in range(SLOW_READERS)
            ]
            reply_id = (await start(slow[0], big))["assistant_message"]["id"]
            for ws in slow[1:]:
                await send(ws, type="resume", message_id=reply_id, offset=0)
            # Nobody reads the slow sockets now; another client chats meanwhile.
            async with websocket(server, other_conversation, other) as ws:
                await start(ws, paced)
                other_frames = await until_done(ws)
            await upstream_closed(fake_openai, big)
            stored = await wait_finished(owner, reply_id)
            growth_kib = memory_kib(pid, "VmHWM") - before
            readings = [await until_done(ws) for ws in slow]
    assert text_of(other_frames) == "".join(paced_tokens)
    assert other_frames[-1]["status"] == "complete"
    assert stored["status"] == "complete" and stored["offset"] == len(full)
    for frames in readings:
        assert text_of(frames) == full
        assert_offsets(frames)
        assert frames[-1]["status"] == "complete" and frames[-1]["offset"] == len(full)
        assert len(frames) - 1 < len(BIG_TOKENS) // 100
    assert growth_kib < 32 * len(full) // 1024, f"grew {growth_kib} KiB"
