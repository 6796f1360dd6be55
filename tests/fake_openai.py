"""A fake OpenAI-compatible server on 127.0.0.1, driven through the real ``openai`` SDK.

It speaks just enough HTTP/1.1 (one request per connection, chunked bodies) to
script what real servers do: pace tokens, delay the first one, cut the stream,
report an error mid-stream, split UTF-8 sequences across network reads, send
Azure's chunk shapes and a usage chunk. It records every request and whether the
client closed it before the reply was over (the upstream "closed early").

A script is chosen by the last user message's content, so a test (or a server
process under test) picks the behaviour by what it sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Script:
    tokens: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
    first_delay: float = 0.0
    interval: float = 0.0
    finish_reason: str | None = "stop"  # None: no chunk says how it finished
    usage: bool = True  # send the include_usage chunk when asked for it
    done: bool = True  # send "data: [DONE]"
    cut: bool = False  # drop the connection after the tokens, mid-chunk
    error_after: int | None = None  # send an in-stream error after this many tokens
    status: int = 200  # another status: a JSON error body instead of a stream
    azure: bool = False  # Azure's shapes: prompt_filter_results first, filter results
    split_bytes: bool = False  # write each event in two halves, splitting UTF-8 sequences
    reject_stream_options: bool = False  # 400 when stream_options is sent
    keep_alive: bool = False  # keep the connection for the next request, as real servers do
    hold_after_done: float = 0.0  # seconds between "data: [DONE]" and the body's end

    @property
    def text(self) -> str:
        return "".join(self.tokens)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    script: Script
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    completed: bool = False  # the whole reply was sent
    closed_early: bool = False  # the client went away before it was
    ended_event: threading.Event = field(default_factory=threading.Event)

    @property
    def prompt(self) -> str:
        messages = self.body.get("messages") or []
        users = [m.get("content", "") for m in messages if m.get("role") == "user"]
        return users[-1] if users else ""


class FakeOpenAI:
    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.requests: list[Request] = []
        self.connections = 0  # accepted so far
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    # --- control, from the tests' thread ------------------------------------------

    def start(self) -> FakeOpenAI:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def azure_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, trigger: str, script: Script) -> str:
        """Answer a request whose last user message is ``trigger`` with ``script``."""
        with self._lock:
            self.scripts[trigger] = script
        return trigger

    def requests_for(self, trigger: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.prompt == trigger]

    def wait_request(self, trigger: str, timeout: float = 10) -> Request:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.requests_for(trigger)
            if found:
                return found[-1]
            time.sleep(0.01)
        raise TimeoutError(f"no request for {trigger!r} within {timeout}s")

    # --- the server ---------------------------------------------------------------

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = None
        with self._lock:
            self.connections += 1
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    return
                await self._respond(request, reader, writer)
                if not (request.script.keep_alive and request.completed):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            if request is not None and not request.completed:
                request.closed_early = True
        finally:
            if request is not None:
                request.ended = time.monotonic()
                request.ended_event.set()
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        body = json.loads(raw) if raw else {}
        messages = body.get("messages") or []
        users = [m.get("content", "") for m in messages if m.get("role") == "user"]
        prompt = users[-1] if users else ""
        with self._lock:
            script = self.scripts.get(prompt) or Script(tokens=_echo_tokens(prompt))
            request = Request(method, path, headers, body, script)
            self.requests.append(request)
        return request

    async def _respond(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        script = request.script
        if not request.path.split("?")[0].endswith("/chat/completions"):
            return await _send_json(writer, 404, {"error": {"message": "Not found"}})
        if script.reject_stream_options and "stream_options" in request.body:
            return await _send_json(
                writer,
                400,
                {"error": {"message": "Unrecognized request argument: stream_options"}},
            )
        if script.status != 200:
            return await _send_json(
                writer,
                script.status,
                {"error": {"message": "Incorrect API key provided: sk-secret-abc", "code": "x"}},
            )
        if not request.body.get("stream"):
            request.completed = True
            return await _send_json(writer, 200, _completion(request))
        connection = b"keep-alive" if script.keep_alive else b"close"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: %s\r\n\r\n" % connection
        )
        await writer.drain()
        if script.keep_alive:  # the next request's bytes must stay unread
            gone: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        else:
            gone = asyncio.ensure_future(reader.read(1))  # b"" once the client hangs up
        try:
            await self._stream(request, writer, gone)
        finally:
            gone.cancel()

    async def _stream(
        self, request: Request, writer: asyncio.StreamWriter, gone: asyncio.Future[bytes]
    ) -> None:
        script = request.script
        model = request.body.get("model", "fake")

        async def pause(seconds: float) -> None:
            if seconds > 0:
                await asyncio.wait({gone}, timeout=seconds)
            if gone.done():
                raise ConnectionResetError("client closed")

        async def send(payload: Any) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
            event = f"data: {data}\n\n".encode()
            if script.split_bytes:
                middle = len(event) // 2
                for part in (event[:middle], event[middle:]):
                    writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                    await writer.drain()
                    await asyncio.sleep(0.005)
            else:
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
            await pause(0)

        if script.azure:
            await send(
                {
                    "id": "",
                    "choices": [],
                    "created": 0,
                    "model": "",
                    "object": "",
                    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
                }
            )
        await pause(script.first_delay)
        role_sent = False
        for index, token in enumerate(script.tokens):
            if script.error_after is not None and index == script.error_after:
                await send(
                    {
                        "error": {
                            "message": "The server had an error (key sk-x)",
                            "type": "server_error",
                        }
                    }
                )
                return
            delta: dict[str, Any] = {"content": token}
            if not role_sent:
                delta["role"], role_sent = "assistant", True
            await send(_chunk(model, delta, None, script.azure))
            await pause(script.interval)
        if script.error_after is not None and script.error_after >= len(script.tokens):
            await send({"error": {"message": "late failure", "type": "server_error"}})
            return
        if script.cut:
            writer.write(b'ff\r\ndata: {"choi')  # a chunk that never ends
            await writer.drain()
            return
        if script.finish_reason is not None:
            await send(_chunk(model, {}, script.finish_reason, script.azure))
        stream_options = request.body.get("stream_options") or {}
        if script.usage and stream_options.get("include_usage"):
            completion = len(script.tokens)
            await send(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": 9,
                        "completion_tokens": completion,
                        "total_tokens": 9 + completion,
                    },
                }
            )
        if script.done:
            await send("[DONE]")
            await pause(script.hold_after_done)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        request.completed = True


def _echo_tokens(prompt: str) -> list[str]:
    words = f"You said: {prompt}".split(" ")
    return [words[0]] + [f" {word}" for word in words[1:]]


def _chunk(model: str, delta: dict[str, Any], finish: str | None, azure: bool) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
    if azure:
        choice["content_filter_results"] = {"hate": {"filtered": False, "severity": "safe"}}
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [choice],
    }


def _completion(request: Request) -> dict[str, Any]:
    text = request.script.text
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": request.body.get("model", "fake"),
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": 9,
            "completion_tokens": len(request.script.tokens),
            "total_tokens": 9 + len(request.script.tokens),
        },
    }


async def _send_json(writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    writer.write(
        b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (status, len(body), body)
    )
    await writer.drain()
