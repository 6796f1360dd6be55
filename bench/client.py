"""The load client: one connection per stream, like a browser's EventSource.

Deliberately raw asyncio (no HTTP library): it shares a core with the fake
upstream and must keep up with 1000 streams, so each socket read costs one
await, chunked bodies are decoded by index and SSE events split in bulk.
Every reply's text is checked against what the upstream sent, and every delta's
``id`` against the text's length in code points.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from bench.upstream import expected_text, prompt

_READ = 65536


@dataclass
class Owner:
    """An anonymous visitor: a session, a CSRF secret and one conversation."""

    session: str
    csrf: str
    conversation: str

    @property
    def cookie(self) -> str:
        return f"sessionid={self.session}; csrftoken={self.csrf}"


@dataclass
class StreamResult:
    started: float = 0.0  # monotonic time the request was sent
    first: float | None = None  # monotonic time of the first delta
    ended: float | None = None  # monotonic time of ``done``
    deltas: int = 0
    gaps: list[float] = field(default_factory=list)
    error: str | None = None
    status: str | None = None
    message_id: str | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.started


class ProtocolError(Exception):
    pass


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = b""

    @classmethod
    async def open(cls, port: int, *, receive_buffer: int | None = None) -> _Connection:
        if receive_buffer is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=_READ)
            return cls(reader, writer)
        # A client that does not read: a small socket buffer, and a reader that stops
        # pulling from the socket after a couple of kilobytes.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
        return cls(reader, writer)

    def send(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    async def head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            data = await self.reader.read(_READ)
            if not data:
                raise ProtocolError("connection closed before the response headers")
            self.buffer += data
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    async def body(self, headers: dict[str, str]) -> bytes:
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            data = await self.reader.read(_READ)
            if not data:
                raise ProtocolError("connection closed mid-body")
            self.buffer += data
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return body

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class _Chunked:
    """Incremental ``Transfer-Encoding: chunked`` decoding."""

    def __init__(self) -> None:
        self.buffer = b""
        self.need = 0  # data bytes left of the current chunk
        self.crlf = False  # the current chunk's trailing CRLF is still to come
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        if self.finished:
            return b""
        buffer = self.buffer + data if self.buffer else data
        out = []
        pos, end = 0, len(buffer)
        while pos < end:
            if self.need:
                take = min(self.need, end - pos)
                out.append(buffer[pos : pos + take])
                pos += take
                self.need -= take
                if self.need:
                    break
                self.crlf = True
            if self.crlf:
                if end - pos < 2:
                    break
                pos += 2
                self.crlf = False
            eol = buffer.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(buffer[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if size == 0:
                self.finished = True
                break
            self.need = size
        self.buffer = buffer[pos:]
        return b"".join(out)


class _Events:
    """Splits an event stream and checks it: deltas in order, ids are code-point offsets."""

    def __init__(self, result: StreamResult, expected: str) -> None:
        self.result = result
        self.expected = expected
        self.text_length = 0
        self.pending = b""
        self.done = False

    def feed(self, data: bytes, now: float) -> None:
        events = (self.pending + data).split(b"\n\n")
        self.pending = events.pop()
        result = self.result
        for raw in events:
            if self.done:
                raise ProtocolError("data after done")
            kind, ident, data_lines = "message", None, []
            for line in raw.split(b"\n"):
                name, _, value = line.partition(b":")
                if value.startswith(b" "):
                    value = value[1:]
                if name == b"data":
                    data_lines.append(value)
                elif name == b"event":
                    kind = value.decode()
                elif name == b"id":
                    ident = int(value)
            if kind == "delta":
                text = json.loads(b"\n".join(data_lines))["text"]
                start = self.text_length
                self.text_length += len(text)
                if self.expected[start : self.text_length] != text:
                    raise ProtocolError(f"wrong text at offset {start}")
                if ident != self.text_length:
                    raise ProtocolError(f"id {ident} but the text is {self.text_length} long")
                if result.first is None:
                    result.first = now
                else:
                    result.gaps.append(now - self.last)
                self.last = now
                result.deltas += 1
            elif kind == "started":
                payload = json.loads(b"\n".join(data_lines))
                result.message_id = payload["assistant_message"]["id"]
            elif kind == "done":
                payload = json.loads(b"\n".join(data_lines))
                result.status = payload.get("status")
                result.ended = now
                self.done = True
            elif kind == "error":
                raise ProtocolError(f"error event: {b''.join(data_lines)[:200]!r}")

    def check_complete(self) -> None:
        if not self.done:
            raise ProtocolError("the stream ended without done")
        if self.text_length != len(self.expected):
            raise ProtocolError(f"got {self.text_length} of {len(self.expected)} characters")
        if self.result.status != "complete":
            raise ProtocolError(f"done says {self.result.status!r}")


class Target:
    """Where streams go: chatstream (a POST that streams, as the page sends) or the baseline."""

    def __init__(self, port: int, variant: str) -> None:
        self.port = port
        self.chatstream = variant != "baseline"

    async def stream(
        self,
        owner: Owner | None,
        count: int,
        rate: float,
        delay: float = 0.0,
        *,
        timeout: float = 120.0,
        read: bool = True,
        hold: float = 0.0,
        result: StreamResult | None = None,
    ) -> StreamResult:
        """One reply, start to ``done``; never raises: failures land in ``error``.

        With ``read=False`` the client sends its requests, then reads nothing of
        the stream for ``hold`` seconds, and hangs up. ``result`` is for a caller
        that watches the reply while it runs.
        """
        result = result or StreamResult(started=time.monotonic())
        try:
            await asyncio.wait_for(
                self._stream(result, owner, count, rate, delay, read, hold), timeout
            )
        except TimeoutError:
            result.error = "timeout"
        except (OSError, ProtocolError, ValueError, KeyError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"[:200]
        return result

    async def _stream(
        self,
        result: StreamResult,
        owner: Owner | None,
        count: int,
        rate: float,
        delay: float,
        read: bool,
        hold: float,
    ) -> None:
        text = prompt(count, rate, delay)
        connection = await _Connection.open(self.port, receive_buffer=None if read else 4096)
        try:
            events = _Events(result, expected_text(count))
            if self.chatstream:
                # The page's one request: the POST answers with the reply's stream.
                assert owner is not None
                connection.send(
                    "POST",
                    f"/api/conversations/{owner.conversation}/messages/",
                    {
                        "Cookie": owner.cookie,
                        "X-CSRFToken": owner.csrf,
                        "Content-Type": "application/json",
                        "Accept": "text/event-stream",
                    },
                    json.dumps({"content": text}).encode(),
                )
            else:
                path = f"/bench/baseline/?prompt={quote(text)}"
                connection.send("GET", path, {"Accept": "text/event-stream"})
            await self._events(connection, events, until_started=not read)
            if not read:  # the reply's id is known: stop reading, then hang up
                await asyncio.sleep(hold)
                return
            events.check_complete()
        finally:
            await connection.close()

    async def _events(
        self, connection: _Connection, events: _Events, *, until_started: bool = False
    ) -> None:
        status, headers = await connection.head()
        if status != 200:
            body = await connection.body(headers) if "content-length" in headers else b""
            raise ProtocolError(f"answered {status}: {body[:200]!r}")
        if "text/event-stream" not in headers.get("content-type", ""):
            raise ProtocolError(f"stream content type {headers.get('content-type')!r}")
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        decoder = _Chunked() if chunked else None
        loop = asyncio.get_running_loop()
        data, connection.buffer = connection.buffer, b""
        while True:
            if data:
                payload = decoder.feed(data) if decoder else data
                if payload:
                    events.feed(payload, loop.time())
                if until_started and events.result.message_id is not None:
                    return
                if events.done or (decoder is not None and decoder.finished):
                    return
            data = await connection.reader.read(_READ)
            if not data:
                return

    async def get_json(self, path: str, owner: Owner | None = None) -> tuple[int, Any]:
        connection = await _Connection.open(self.port)
        try:
            headers = {"Accept": "application/json"}
            if owner is not None:
                headers["Cookie"] = owner.cookie
            connection.send("GET", path, headers)
            status, response_headers = await connection.head()
            return status, json.loads(await connection.body(response_headers))
        finally:
            await connection.close()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
