"""What a slow WebSocket client costs the server: memory, frames, and everyone else's pace.

A fast model streams a long reply (1 MiB by default) while a client stops
reading. Because the consumer's one reader pulls "all text after my offset",
awaits the send and pulls again, the slow client should cost at most about the
reply's size (Daphne buffers what was sent; uvicorn pushes back and the text
waits in the log), never a cost per token or per frame; another client on the
same server should keep its pace; and the slow client, reading again, should get
the exact text in fewer, larger frames than the model's tokens.

Each scenario runs on a fresh server process (so the allocator's reuse of an
earlier scenario's memory cannot hide a cost). Peak memory is the server's
VmHWM from /proc after resetting it (``clear_refs``), so no sampling is missed.
The server is pinned to CPU 1, this process (client and fake upstream) to CPU 0.

    .venv/bin/python bench/ws_slow_client.py [--servers daphne,uvicorn] [--kib 1024]

Only 127.0.0.1; every loop is bounded; prints figures, asserts nothing but the text.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

from tests.conftest import LiveServer, make_live_server  # noqa: E402
from tests.fake_openai import FakeOpenAI, Script  # noqa: E402
from tests.sse_client import ApiClient  # noqa: E402

TOKEN_CHARS = 16
TIMEOUT = 120.0
PACED_TOKENS, PACED_INTERVAL = 40, 0.025  # the other client's reply: about 1 s


def big_tokens(kib: int) -> list[str]:
    count = kib * 1024 // TOKEN_CHARS
    return [f"t{i:0{TOKEN_CHARS - 2}d} " for i in range(count)]


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak since the last reset) in KiB."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            figures[name] = int(value.split()[0])
    return figures


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def pin(pid: int, cpu: int) -> None:
    """Pin every thread of ``pid``; threads started later inherit it."""
    done = subprocess.run(
        ["taskset", "-a", "-p", "-c", str(cpu), str(pid)], text=True, capture_output=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"taskset failed: {done.stderr.strip()}")


def cookie_of(client: ApiClient) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in client.http.cookies.jar)


@contextlib.asynccontextmanager
async def websocket(
    server: LiveServer, client: ApiClient, conversation: str, *, slow: bool = False
) -> AsyncIterator[ClientConnection]:
    sock = None
    if slow:
        # A small receive window, set before connecting: the kernel cannot hide the stall.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
    url = f"ws://127.0.0.1:{server.port}/ws/conversations/{conversation}/"
    async with connect(
        url,
        origin=server.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": cookie_of(client)},
        max_size=None,
        max_queue=1 if slow else 16,
        compression=None,
        proxy=None,
        open_timeout=TIMEOUT,
        sock=sock,
    ) as ws:
        yield ws


async def frame(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


@dataclass
class Reading:
    text: str = ""
    deltas: int = 0
    largest: int = 0
    gaps: list[float] = field(default_factory=list)
    done: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


async def read_reply(ws: ClientConnection, reading: Reading | None = None) -> Reading:
    reading = reading or Reading()
    started = last = time.monotonic()
    while True:
        data = await frame(ws)
        now = time.monotonic()
        if data["type"] == "delta":
            reading.text += data["text"]
            assert data["offset"] == len(reading.text), "offset is not the text's length"
            reading.deltas += 1
            reading.largest = max(reading.largest, len(data["text"]))
            reading.gaps.append(now - last)
            last = now
        elif data["type"] == "done":
            reading.done = data
            reading.seconds = now - started
            return reading


async def start_reply(ws: ClientConnection, content: str) -> str:
    await ws.send(json.dumps({"type": "send", "content": content}))
    started = await frame(ws)
    assert started["type"] == "started", started
    return started["assistant_message"]["id"]


async def wait_upstream(fake: FakeOpenAI, trigger: str) -> float:
    request = await asyncio.to_thread(fake.wait_request, trigger, TIMEOUT)
    assert await asyncio.to_thread(request.ended_event.wait, TIMEOUT), "upstream never ended"
    return (request.ended or 0) - request.started


async def wait_finished(client: ApiClient, reply_id: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        response = await asyncio.to_thread(client.call, "GET", f"/api/messages/{reply_id}/")
        if response.json()["status"] != "streaming":
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"reply {reply_id} did not finish")


@dataclass
class Figures:
    scenario: str
    growth_kib: int = 0
    upstream_s: float = 0.0
    readers: list[Reading] = field(default_factory=list)
    paced: Reading | None = None


async def scenario(
    server: LiveServer, fake: FakeOpenAI, name: str, tokens: list[str], slow_readers: int
) -> Figures:
    """``slow_readers``: -1 none at all (HTTP only), 0 one fast reader, N>0 N stalled readers."""
    pid = server.process.pid  # type: ignore[union-attr]
    full = "".join(tokens)
    trigger = fake.script(f"{name}-{os.urandom(4).hex()}", Script(tokens=tokens))
    paced_trigger = fake.script(
        f"paced-{os.urandom(4).hex()}",
        Script(tokens=[f"p{i} " for i in range(PACED_TOKENS)], interval=PACED_INTERVAL),
    )
    figures = Figures(name)
    with server.client() as owner, server.client() as other:
        conversation = owner.conversation()["id"]
        other_conversation = other.conversation()["id"]
        # Warm up: the first reply of a process imports and connects lazily.
        warm = owner.start("warm-up")
        await wait_finished(owner, warm["assistant_message"]["id"])
        before = memory(pid)["VmRSS"]
        reset_peak(pid)
        if slow_readers < 0:
            reply_id = owner.send(conversation, trigger)["assistant_message"]["id"]
            figures.upstream_s = await wait_upstream(fake, trigger)
            await wait_finished(owner, reply_id)
        elif slow_readers == 0:
            async with websocket(server, owner, conversation) as ws:
                await start_reply(ws, trigger)
                reading = await read_reply(ws)
                figures.readers.append(reading)
            figures.upstream_s = await wait_upstream(fake, trigger)
        else:
            async with contextlib.AsyncExitStack() as stack:
                slow = [
                    await stack.enter_async_context(
                        websocket(server, owner, conversation, slow=True)
                    )
                    for _ in range(slow_readers)
                ]
                reply_id = await start_reply(slow[0], trigger)
                for ws in slow[1:]:
                    resume = {"type": "resume", "message_id": reply_id, "offset": 0}
                    await ws.send(json.dumps(resume))
                # Nobody reads the slow sockets now; once the model is done, another
                # client chats on the same server while they still hold the reply.
                figures.upstream_s = await wait_upstream(fake, trigger)
                await wait_finished(owner, reply_id)
                async with websocket(server, other, other_conversation) as ws:
                    await start_reply(ws, paced_trigger)
                    figures.paced = await read_reply(ws)
                peak = memory(pid)["VmHWM"]
                for ws in slow:  # now they read again
                    figures.readers.append(await read_reply(ws))
                figures.growth_kib = peak - before
        if slow_readers <= 0:
            figures.growth_kib = memory(pid)["VmHWM"] - before
    for reading in figures.readers:
        assert reading.text == full, "the text is not exact"
        assert reading.done["status"] == "complete", reading.done["status"]
    return figures


def report(kind: str, figures: Figures, tokens: int, reply_kib: int) -> None:
    readers = figures.readers
    line = (
        f"{kind:7} {figures.scenario:22} peak RSS growth {figures.growth_kib / 1024:6.1f} MiB"
        f" ({figures.growth_kib / reply_kib:4.1f}x reply)  upstream {figures.upstream_s:5.2f}s"
    )
    if readers:
        frames = ", ".join(str(r.deltas) for r in readers)
        largest = max(r.largest for r in readers)
        line += f"  delta frames {frames} for {tokens} tokens (largest {largest} chars)"
    print(line, flush=True)
    if figures.paced is not None:
        paced = figures.paced
        scripted = PACED_TOKENS * PACED_INTERVAL
        print(
            f"{'':7} {'':22} other client: {paced.deltas} frames, whole reply in "
            f"{paced.seconds:.2f}s (scripted {scripted:.2f}s), longest gap "
            f"{max(paced.gaps) * 1000:.0f} ms",
            flush=True,
        )


async def run(servers: list[str], kib: int) -> None:
    tokens = big_tokens(kib)
    reply_kib = len("".join(tokens)) // 1024
    fake = FakeOpenAI().start()
    pin(os.getpid(), 0)
    print(
        f"reply: {len(tokens)} tokens, {reply_kib} KiB; FLUSH_INTERVAL 0.05 s; "
        f"server on CPU 1, client and fake upstream on CPU 0",
        flush=True,
    )
    plans = [
        ("no reader (HTTP only)", -1),
        ("1 fast reader", 0),
        ("1 slow reader", 1),
        ("4 slow readers", 4),
    ]
    try:
        with tempfile.TemporaryDirectory(prefix="ws-slow-") as tmp:
            for kind in servers:
                for index, (name, slow) in enumerate(plans):
                    server = make_live_server(
                        kind,
                        Path(tmp) / f"{kind}-{index}",
                        fake,
                        TEST_FLUSH_INTERVAL="0.05",
                        TEST_CHECKPOINT_INTERVAL="5",
                        DJANGO_LOG_LEVEL="WARNING",
                    )
                    try:
                        pin(server.process.pid, 1)  # type: ignore[union-attr]
                        figures = await scenario(server, fake, name, tokens, slow)
                    finally:
                        server.stop()
                    report(kind, figures, len(tokens), reply_kib)
    finally:
        fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="daphne,uvicorn")
    parser.add_argument("--kib", type=int, default=1024, help="the long reply's size")
    args = parser.parse_args()
    asyncio.run(run(args.servers.split(","), args.kib))


if __name__ == "__main__":
    main()
