"""A lean fake OpenAI-compatible upstream for the benchmark, on 127.0.0.1 only.

Deliberately not ``tests/fake_openai.py``: that one scripts failures with a task
and a ``sleep`` per token; this one must pace 1000 streams at 20 tokens/s on a
core it shares with the load client. So: one ``asyncio.Protocol`` per
connection (HTTP/1.1 keep-alive, chunked responses), chunks pre-encoded once per
token index, and one heap-driven ticker for every stream's pacing (each stream
still keeps its own schedule: token ``i`` is due at ``start + i / rate``).

The reply is chosen by the last user message, ``bench tokens=N rate=R delay=D``:
``N`` tokens (see ``tokens``), ``R`` tokens a second (0: as fast as the
connection takes them), the first token after ``D`` seconds. Run it alone with
``python bench/upstream.py --port 8100``; it prints ``READY <port>`` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import signal
import sys
from typing import Any

_MODEL = "bench-model"
_TICK = 0.002  # the ticker's resolution, in seconds
_FAST_BATCH = 64  # tokens written per loop turn for an unpaced stream


def token(index: int) -> str:
    """The ``index``-th token of every bench reply: ASCII, non-ASCII and line breaks."""
    if index % 50 == 49:
        return "\n"
    if index % 7 == 3:
        return f" ünï{index}"
    return f" w{index}"


def tokens(count: int) -> list[str]:
    return [token(i) for i in range(count)]


def expected_text(count: int) -> str:
    return "".join(tokens(count))


def prompt(count: int, rate: float, delay: float = 0.0) -> str:
    return f"bench tokens={count} rate={rate:g} delay={delay:g}"


def parse_prompt(text: str) -> tuple[int, float, float]:
    params = dict(part.split("=", 1) for part in text.split()[1:] if "=" in part)
    return (
        int(params.get("tokens", 20)),
        float(params.get("rate", 0)),
        float(params.get("delay", 0)),
    )


def _frame(payload: str) -> bytes:
    event = f"data: {payload}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(event), event)


def _chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": _MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


class _Frames:
    """Pre-encoded chunk frames, built once per token index."""

    def __init__(self) -> None:
        self._tokens: list[bytes] = []
        self.finish = _frame(json.dumps(_chunk({}, "stop")))
        self.done = _frame("[DONE]") + b"0\r\n\r\n"

    def token(self, index: int) -> bytes:
        while len(self._tokens) <= index:
            i = len(self._tokens)
            delta = {"content": token(i)}
            if i == 0:
                delta = {"role": "assistant", **delta}
            self._tokens.append(_frame(json.dumps(_chunk(delta, None), ensure_ascii=False)))
        return self._tokens[index]

    def usage(self, count: int) -> bytes:
        payload = {
            **_chunk({}, None),
            "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": count, "total_tokens": 9 + count},
        }
        return _frame(json.dumps(payload))


class _Stream:
    __slots__ = ("protocol", "count", "interval", "due", "index", "usage", "alive")

    def __init__(self, protocol: _Protocol, count: int, rate: float, start: float, usage: bool):
        self.protocol = protocol
        self.count = count
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.due = start
        self.index = 0
        self.usage = usage
        self.alive = True


class Upstream:
    def __init__(self) -> None:
        self.frames = _Frames()
        self.heap: list[tuple[float, int, _Stream]] = []
        self.fast: list[_Stream] = []
        self._seq = 0
        self._ticking = False
        self.started = 0
        self.completed = 0
        self.closed_early = 0
        self.active = 0

    def begin(self, stream: _Stream) -> None:
        if not stream.alive:  # its connection closed while it waited for its delay
            return
        self.started += 1
        self.active += 1
        if stream.interval:
            self._push(stream)
        else:
            self.fast.append(stream)
        self._ensure_ticking()

    def _push(self, stream: _Stream) -> None:
        self._seq += 1
        heapq.heappush(self.heap, (stream.due, self._seq, stream))

    def _ensure_ticking(self) -> None:
        if not self._ticking:
            self._ticking = True
            asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        heap, frames = self.heap, self.frames
        while heap and heap[0][0] <= now:
            _, _, stream = heapq.heappop(heap)
            if not stream.alive:
                continue
            stream.protocol.write(frames.token(stream.index))
            stream.index += 1
            if stream.index >= stream.count:
                self._end(stream)
            else:
                stream.due += stream.interval
                self._push(stream)
        fast, self.fast = self.fast, []
        for stream in fast:
            if not stream.alive:
                continue
            if stream.protocol.paused:  # the server is not reading: wait for resume
                self.fast.append(stream)
                continue
            stop = min(stream.count, stream.index + _FAST_BATCH)
            stream.protocol.write(b"".join(frames.token(i) for i in range(stream.index, stop)))
            stream.index = stop
            if stream.index >= stream.count:
                self._end(stream)
            else:
                self.fast.append(stream)
        if self.fast:
            loop.call_soon(self._tick)
        elif heap:
            loop.call_at(max(heap[0][0], now + _TICK), self._tick)
        else:
            self._ticking = False

    def _end(self, stream: _Stream) -> None:
        tail = self.frames.finish
        if stream.usage:
            tail += self.frames.usage(stream.count)
        stream.protocol.write(tail + self.frames.done)
        stream.alive = False
        stream.protocol.stream = None
        self.active -= 1
        self.completed += 1

    def lost(self, stream: _Stream) -> None:
        if stream.alive:
            stream.alive = False
            self.active -= 1
            self.closed_early += 1

    def stats(self) -> dict[str, int]:
        return {
            "started": self.started,
            "completed": self.completed,
            "closed_early": self.closed_early,
            "active": self.active,
        }


class _Protocol(asyncio.Protocol):
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.stream: _Stream | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            self.upstream.lost(self.stream)
            self.stream = None
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < head_end + 4 + length:
                return
            body = self.buffer[head_end + 4 : head_end + 4 + length]
            self.buffer = self.buffer[head_end + 4 + length :]
            self._request(head[0], body)

    def _request(self, request_line: str, raw: bytes) -> None:
        path = request_line.split(" ")[1] if " " in request_line else ""
        body = json.loads(raw) if raw else {}
        if not path.split("?")[0].endswith("/chat/completions") or not body.get("stream"):
            payload = json.dumps({"error": {"message": "bench upstream: stream only"}}).encode()
            self.write(
                b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
            )
            return
        users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
        count, rate, delay = parse_prompt(users[-1] if users else "")
        self.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        loop = asyncio.get_running_loop()
        self.stream = _Stream(self, count, rate, loop.time() + delay, usage)
        if delay and not rate:
            loop.call_later(delay, self.upstream.begin, self.stream)
        else:
            self.upstream.begin(self.stream)


async def serve(port: int, ready: Any = None) -> None:
    upstream = Upstream()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Protocol(upstream), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    stats_path = os.environ.get("BENCH_UPSTREAM_STATS")
    print(f"READY {bound}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # Reports its counters on stdin's request: one line in, one JSON line out.
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stdin_done = asyncio.ensure_future(reader.readline())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            await asyncio.wait({stdin_done, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.done():
                break
            line = stdin_done.result()
            if not line:  # the parent went away
                break
            print(json.dumps(upstream.stats()), flush=True)
            stdin_done = asyncio.ensure_future(reader.readline())
    finally:
        stdin_done.cancel()
        stopping.cancel()
        server.close()
        if stats_path:
            with open(stats_path, "w") as file:
                json.dump(upstream.stats(), file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
