"""A fake OpenAI-compatible server on 127.0.0.1, driven through the real ``openai`` SDK.

It speaks just enough HTTP/1.1 (one request per connection, chunked bodies) to
script what real servers do: pace tokens, delay the first one, cut the stream,
report an error mid-stream, split UTF-8 sequences across network reads, send
Azure's chunk shapes and a usage chunk. It records every request and whether the
client closed it before the reply was over (the upstream "closed early").

It serves Chat Completions (``POST .../chat/completions``, Azure's deployment path
too) and the Responses API (``POST .../responses``: OpenAI's ``/v1/responses``,
Azure's ``/openai/responses?api-version=...`` and ``/openai/v1/responses``), both
with the shapes the real APIs document: models named like OpenAI's reasoning models
(o1, o3, o4-mini, gpt-5*) refuse ``max_tokens`` and a temperature other than 1 with
OpenAI's exact 400 bodies; reasoning streams as ``reasoning_content`` or
``reasoning`` deltas (DeepSeek, vLLM / Ollama, OpenRouter) or as Responses reasoning
summary events; usage reports reasoning and cached tokens; an output limit counts
the thinking too; a conversation over ``context_window`` is refused as too long.

A script is chosen by the last user message's content (of ``messages``, or of a
Responses ``input``), so a test (or a server process under test) picks the
behaviour by what it sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal


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
    hold_after_done: float = 0.0  # seconds between "data: [DONE]" (or the last event) and the end
    reasoning: list[str] = field(default_factory=list)  # streamed before the tokens
    # Chat Completions: the delta field reasoning streams in (DeepSeek/vLLM, Ollama/OpenRouter)
    reasoning_field: Literal["reasoning_content", "reasoning"] = "reasoning_content"
    # Responses: reasoning summary events (OpenAI) or raw reasoning text events (gpt-oss)
    reasoning_events: Literal["summary", "text"] = "summary"
    # Whether the model behaves as an OpenAI reasoning model; None: decided by its name
    # (a deployment's name need not tell)
    reasoning_model: bool | None = None
    interleave: bool = False  # alternate reasoning and tokens instead of reasoning first
    hidden_reasoning: int = 0  # tokens thought and not shown (counted in usage and budget)
    cached_tokens: int = 0  # prompt tokens reported as served from the prompt cache
    context_window: int | None = None  # refuse a conversation of more words than this
    refuse: tuple[str, ...] = ()  # parameters refused as unrecognized (an older server)
    error_code: str = "server_error"  # the in-stream error's code
    # Responses: a failure as a response.failed event, or as an error event
    error_event: Literal["response.failed", "error"] = "response.failed"

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def parts(self) -> list[tuple[str, str]]:
        """The reply's pieces in the order they stream: ("reasoning" | "text", piece)."""
        thought = [("reasoning", piece) for piece in self.reasoning]
        said = [("text", token) for token in self.tokens]
        if not self.interleave:
            return thought + said
        mixed = itertools.zip_longest(thought, said)
        return [part for pair in mixed for part in pair if part is not None]


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
        return _prompt(self.body)


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
        prompt = _prompt(body)
        with self._lock:
            script = self.scripts.get(prompt) or Script(tokens=_echo_tokens(prompt))
            request = Request(method, path, headers, body, script)
            self.requests.append(request)
        return request

    async def _respond(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        script = request.script
        path = request.path.split("?")[0]
        responses = path.endswith("/responses")
        if not (responses or path.endswith("/chat/completions")):
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
        refusal = _refusal(request.body, script, responses)
        if refusal is not None:
            return await _send_json(writer, 400, {"error": refusal})
        if not request.body.get("stream"):
            request.completed = True
            reply = _response(request) if responses else _completion(request)
            return await _send_json(writer, 200, reply)
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
            if responses:
                await self._stream_response(request, writer, gone)
            else:
                await self._stream(request, writer, gone)
        finally:
            gone.cancel()

    async def _stream(
        self, request: Request, writer: asyncio.StreamWriter, gone: asyncio.Future[bytes]
    ) -> None:
        script = request.script
        model = request.body.get("model", "fake")
        send, pause = _channel(script, writer, gone)

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
        limit = request.body.get("max_completion_tokens", request.body.get("max_tokens"))
        parts, finish_reason = _budget(script, limit)
        role_sent = False
        said = 0
        for kind, piece in parts:
            if kind == "text" and script.error_after is not None and said == script.error_after:
                await send(
                    {
                        "error": {
                            "message": "The server had an error (key sk-x)",
                            "type": "server_error",
                            "code": script.error_code,
                        }
                    }
                )
                return
            if kind == "text":
                delta: dict[str, Any] = {"content": piece}
                said += 1
            else:
                delta = {"content": None, script.reasoning_field: piece}
            if not role_sent:
                delta["role"], role_sent = "assistant", True
            await send(_chunk(model, delta, None, script.azure))
            await pause(script.interval)
        if script.error_after is not None and script.error_after >= said:
            await send(
                {
                    "error": {
                        "message": "late failure",
                        "type": "server_error",
                        "code": script.error_code,
                    }
                }
            )
            return
        if script.cut:
            writer.write(b'ff\r\ndata: {"choi')  # a chunk that never ends
            await writer.drain()
            return
        if finish_reason is not None:
            await send(_chunk(model, {}, finish_reason, script.azure))
        stream_options = request.body.get("stream_options") or {}
        if script.usage and stream_options.get("include_usage"):
            await send(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [],
                    "usage": _chat_usage(script, model, parts),
                }
            )
        if script.done:
            await send("[DONE]")
            await pause(script.hold_after_done)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        request.completed = True

    async def _stream_response(
        self, request: Request, writer: asyncio.StreamWriter, gone: asyncio.Future[bytes]
    ) -> None:
        """The Responses API's typed events, each with its ``sequence_number``."""
        script = request.script
        send, pause = _channel(script, writer, gone, events=True)
        numbers = itertools.count()
        response = _response(request, status="in_progress")

        async def emit(kind: str, **fields: Any) -> None:
            await send({"type": kind, **fields, "sequence_number": next(numbers)})

        await emit("response.created", response=response)
        await emit("response.in_progress", response=response)
        await pause(script.first_delay)
        parts, finish_reason = _budget(script, request.body.get("max_output_tokens"))
        # OpenAI streams a reasoning summary only when asked for one; it thinks all the same.
        asked = (request.body.get("reasoning") or {}).get("summary")
        hidden = script.reasoning_events == "summary" and not asked
        shown = [part for part in parts if part[0] == "text"] if hidden else parts
        said = 0
        output: list[dict[str, Any]] = []
        for index, run in enumerate(_runs(shown)):
            kind = run[0][0]
            if kind == "reasoning":
                item: dict[str, Any] = {"id": f"rs_{index}", "type": "reasoning", "summary": []}
            else:
                item = {
                    "id": f"msg_{index}",
                    "type": "message",
                    "role": "assistant",
                    "status": "in_progress",
                    "content": [],
                }
            where = {"item_id": item["id"], "output_index": index}
            await emit("response.output_item.added", output_index=index, item=item)
            summary = kind == "reasoning" and script.reasoning_events == "summary"
            if summary:
                part: dict[str, Any] = {"type": "summary_text", "text": ""}
                await emit(
                    "response.reasoning_summary_part.added", **where, summary_index=0, part=part
                )
            elif kind == "text":
                part = {"type": "output_text", "text": "", "annotations": []}
                await emit("response.content_part.added", **where, content_index=0, part=part)
            text = ""
            for _, piece in run:
                if kind == "text" and script.error_after is not None and said == script.error_after:
                    return await self._fail(emit, script, response)
                if summary:
                    await emit(
                        "response.reasoning_summary_text.delta",
                        **where,
                        summary_index=0,
                        delta=piece,
                    )
                elif kind == "reasoning":
                    await emit(
                        "response.reasoning_text.delta", **where, content_index=0, delta=piece
                    )
                else:
                    await emit(
                        "response.output_text.delta",
                        **where,
                        content_index=0,
                        delta=piece,
                        logprobs=[],
                    )
                    said += 1
                text += piece
                await pause(script.interval)
            if summary:
                part = {"type": "summary_text", "text": text}
                await emit(
                    "response.reasoning_summary_text.done", **where, summary_index=0, text=text
                )
                await emit(
                    "response.reasoning_summary_part.done", **where, summary_index=0, part=part
                )
                item = {**item, "summary": [part]}
            elif kind == "reasoning":
                await emit("response.reasoning_text.done", **where, content_index=0, text=text)
                item = {**item, "content": [{"type": "reasoning_text", "text": text}]}
            else:
                part = {"type": "output_text", "text": text, "annotations": []}
                await emit("response.output_text.done", **where, content_index=0, text=text)
                await emit("response.content_part.done", **where, content_index=0, part=part)
                item = {**item, "status": "completed", "content": [part]}
            output.append(item)
            await emit("response.output_item.done", output_index=index, item=item)
        if script.error_after is not None and script.error_after >= said:
            return await self._fail(emit, script, response)
        if script.cut:
            writer.write(b'ff\r\nevent: response.output_text.delta\ndata: {"ty')
            await writer.drain()
            return
        usage = _responses_usage(script, parts) if script.usage else None
        if finish_reason == "stop":
            done = {**response, "status": "completed", "output": output, "usage": usage}
            await emit("response.completed", response=done)
        elif finish_reason is not None:
            reason = "max_output_tokens" if finish_reason == "length" else finish_reason
            done = {
                **response,
                "status": "incomplete",
                "incomplete_details": {"reason": reason},
                "output": output,
                "usage": usage,
            }
            await emit("response.incomplete", response=done)
        await pause(script.hold_after_done)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        request.completed = True

    @staticmethod
    async def _fail(emit: Any, script: Script, response: dict[str, Any]) -> None:
        error = {"code": script.error_code, "message": "The server had an error (key sk-x)"}
        if script.error_event == "error":
            await emit("error", **error, param=None)
        else:
            await emit("response.failed", response={**response, "status": "failed", "error": error})


_REASONING_MODEL = re.compile(r"(?:o\d+(?:-|$)|gpt-5)", re.IGNORECASE)


def _thinks(model: str, script: Script) -> bool:
    """Whether the model behaves as OpenAI's reasoning models do (o1, o3, o4-mini, gpt-5*)."""
    if script.reasoning_model is not None:
        return script.reasoning_model
    return bool(_REASONING_MODEL.match(str(model).rsplit("/", 1)[-1]))


def _prompt(body: dict[str, Any]) -> str:
    """The last user message of a chat ``messages`` list or a Responses ``input``."""
    items = body.get("messages") or body.get("input") or []
    if isinstance(items, str):
        return items
    users = [m.get("content", "") for m in items if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        return ""
    content = users[-1]
    if isinstance(content, list):  # content parts: [{"type": "input_text", "text": ...}]
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content


def _words(body: dict[str, Any]) -> int:
    items = body.get("messages") or body.get("input") or []
    if isinstance(items, str):
        return len(items.split())
    return sum(len(str(m.get("content", "")).split()) for m in items if isinstance(m, dict))


def _refusal(body: dict[str, Any], script: Script, responses: bool) -> dict[str, Any] | None:
    """The error object the real API answers this body with (400), or ``None``."""
    model = body.get("model", "")
    for name in script.refuse:
        if name in body:  # the wording of older servers: no param, no code
            return {
                "message": f"Unrecognized request argument supplied: {name}",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
    if _thinks(model, script) and not responses and "max_tokens" in body:
        return {
            "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": "unsupported_parameter",
        }
    temperature = body.get("temperature")
    if _thinks(model, script) and temperature is not None and temperature != 1:
        if responses:
            return {
                "message": "Unsupported parameter: 'temperature' is not supported with this model.",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": "unsupported_parameter",
            }
        return {
            "message": f"Unsupported value: 'temperature' does not support {temperature} with "
            "this model. Only the default (1) value is supported.",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "unsupported_value",
        }
    if responses and not _thinks(model, script) and body.get("reasoning"):
        param = "reasoning.effort" if "effort" in body["reasoning"] else "reasoning.summary"
        return {
            "message": f"Unsupported parameter: '{param}' is not supported with this model.",
            "type": "invalid_request_error",
            "param": param,
            "code": "unsupported_parameter",
        }
    limit = body.get("max_output_tokens")
    if responses and isinstance(limit, int) and limit < 16:
        return {
            "message": "Invalid 'max_output_tokens': integer below minimum value. "
            f"Expected a value >= 16, but got {limit} instead.",
            "type": "invalid_request_error",
            "param": "max_output_tokens",
            "code": "integer_below_min_value",
        }
    words = _words(body)
    if script.context_window is not None and words > script.context_window:
        if responses:
            message = (
                "Your input exceeds the context window of this model. "
                "Please adjust your input and try again."
            )
        else:
            message = (
                f"This model's maximum context length is {script.context_window} tokens. "
                f"However, your messages resulted in {words} tokens. "
                "Please reduce the length of the messages."
            )
        return {
            "message": message,
            "type": "invalid_request_error",
            "param": "input" if responses else "messages",
            "code": "context_length_exceeded",
        }
    return None


def _budget(script: Script, limit: Any) -> tuple[list[tuple[str, str]], str | None]:
    """The parts an output limit lets through, and how the reply finishes.

    As with OpenAI's reasoning models, thinking (shown or hidden) counts against the
    limit; a reply cut by it finishes with "length".
    """
    parts = script.parts()
    if not isinstance(limit, int):
        return parts, script.finish_reason
    room = limit - script.hidden_reasoning
    if room >= len(parts):
        return parts, script.finish_reason
    return parts[: max(room, 0)], "length"


def _runs(parts: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Consecutive parts of one kind: one Responses output item each."""
    return [list(run) for _, run in itertools.groupby(parts, key=lambda part: part[0])]


def _usage_counts(script: Script, parts: list[tuple[str, str]]) -> tuple[int, int]:
    reasoning = script.hidden_reasoning + sum(1 for kind, _ in parts if kind == "reasoning")
    return len(parts) + script.hidden_reasoning, reasoning


def _chat_usage(script: Script, model: str, parts: list[tuple[str, str]]) -> dict[str, Any]:
    completion, reasoning = _usage_counts(script, parts)
    usage: dict[str, Any] = {
        "prompt_tokens": 9,
        "completion_tokens": completion,
        "total_tokens": 9 + completion,
    }
    if reasoning or script.cached_tokens or _thinks(model, script):
        usage["prompt_tokens_details"] = {"cached_tokens": script.cached_tokens, "audio_tokens": 0}
        usage["completion_tokens_details"] = {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        }
    return usage


def _responses_usage(script: Script, parts: list[tuple[str, str]]) -> dict[str, Any]:
    completion, reasoning = _usage_counts(script, parts)
    return {
        "input_tokens": 9,
        "input_tokens_details": {"cached_tokens": script.cached_tokens},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": 9 + completion,
    }


def _channel(
    script: Script, writer: asyncio.StreamWriter, gone: asyncio.Future[bytes], events: bool = False
) -> tuple[Any, Any]:
    """``send(payload)`` writes one SSE event (with an ``event:`` line for typed events);
    ``pause(seconds)`` waits, raising once the client has hung up."""

    async def pause(seconds: float) -> None:
        if seconds > 0:
            await asyncio.wait({gone}, timeout=seconds)
        if gone.done():
            raise ConnectionResetError("client closed")

    async def send(payload: Any) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        head = f"event: {payload['type']}\n" if events else ""
        event = f"{head}data: {data}\n\n".encode()
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

    return send, pause


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


def _response(request: Request, status: str = "completed") -> dict[str, Any]:
    """A Responses ``response`` object: whole (not streamed), or as the stream starts."""
    script, body = request.script, request.body
    parts, _ = _budget(script, body.get("max_output_tokens"))
    done = status == "completed"
    text = "".join(piece for kind, piece in parts if kind == "text")
    output = (
        [
            {
                "id": "msg_0",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
        if done
        else []
    )
    return {
        "id": "resp_fake",
        "object": "response",
        "created_at": 0,
        "status": status,
        "model": body.get("model", "fake"),
        "output": output,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "reasoning": body.get("reasoning"),
        "store": body.get("store", True),
        "temperature": body.get("temperature"),
        "usage": _responses_usage(script, parts) if done else None,
    }


async def _send_json(writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    writer.write(
        b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (status, len(body), body)
    )
    await writer.drain()
