"""Providers on the ``openai`` SDK: OpenAI, any OpenAI-compatible server, and Azure OpenAI,
over Chat Completions (``OpenAIProvider``) or the Responses API (``OpenAIResponsesProvider``).

Deliberately not the SDK's own ``AsyncStream``: building its objects costs about
55 µs of CPU per chunk, against about 3 µs to ``json.loads`` the SSE line. We use
``with_streaming_response`` (which keeps the SDK's auth, retries and Azure
handling) and parse the raw lines ourselves, so ``[DONE]``, in-stream
``{"error": ...}`` payloads and raw ``httpx2`` transport errors are handled here.
The Responses API's events are parsed by the pure ``chatstream.providers.responses``.

The HTTP transport is the SDK's own aiohttp one (``openai[aiohttp]``) unless the
options say ``"transport": "httpx2"``: httpx2's anyio streams arm a cancel scope
and re-register the socket with epoll on every read, which cost more CPU per
relayed token than everything else chatstream does with it.

Model families differ in the parameters they take, and servers differ in the names
they know: reasoning models (o1, o3, o4-mini, gpt-5 and later) refuse ``max_tokens``
and any temperature but the default, some compatible servers refuse
``stream_options`` or ``max_completion_tokens``. The request starts from the
documented rules (``is_reasoning_model``, ``max_tokens_param``); a 400 that refuses
a parameter we sent is answered by asking once more without it (or by its other
name), and the provider remembers that for the model, so the next reply asks right
the first time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import aiohttp
import httpx2
import openai
from django.core.exceptions import ImproperlyConfigured
from openai._vendor.httpx_aiohttp import AiohttpTransport

from chatstream.exceptions import UpstreamError
from chatstream.providers.base import ChatRequest, Chunk, Provider, Usage
from chatstream.providers.responses import StreamFailure, input_items, parse_event

logger = logging.getLogger(__name__)

_DEFAULT_TIMEOUT = httpx2.Timeout(120.0, connect=10.0)
_T = TypeVar("_T")
_DRAIN_TIMEOUT = 2.0  # seconds to wait for a body's end after [DONE]
#: aiohttp's read buffer per upstream response; it stops reading past twice this.
#: The SDK's transport reads 16 KiB at a time, which raises any smaller value to it.
READ_BUFFER = 16 * 1024
#: Requests per reply at most: the first, and one more for each parameter refused.
_ATTEMPTS = 4

# Fixed, safe texts: an upstream's own message may echo part of a key or a prompt.
_STATUS_ERRORS = {
    400: ("upstream_bad_request", "The model's server rejected the request."),
    401: ("upstream_auth", "The model's server refused the credentials."),
    403: ("upstream_auth", "The model's server refused the credentials."),
    404: ("upstream_not_found", "The model or deployment was not found on the server."),
    408: ("upstream_timeout", "The model's server timed out."),
    422: ("upstream_bad_request", "The model's server rejected the request."),
    429: ("upstream_rate_limited", "The model's server is rate limiting; try again shortly."),
}
_CONTEXT_TOO_LONG = (
    "The conversation is too long for the model: start a new conversation, or shorten your message."
)
_MID_REPLY = "The model's server reported an error mid-reply."
_STREAM_ERRORS = {
    "rate_limit_exceeded": (
        "upstream_rate_limited",
        "The model's server is rate limiting; try again shortly.",
    ),
}

# OpenAI says "context_length_exceeded"; vLLM, DeepSeek and others only say it in words
# ("This model's maximum context length is ...", llama.cpp's "exceeds the available
# context size", the Responses API's "exceeds the context window").
_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_CONTEXT_WORDS = re.compile(r"context[ _](?:length|size|window)|maximum context", re.IGNORECASE)

# What an upstream's error text may echo that must never reach a log: API keys
# (OpenAI "sk-...", Azure's 32 or 84 characters), bearer tokens.
_SECRETS = re.compile(
    r"\b(?:sk|rk|pk)-[\w\-*.]+|\bbearer\s+[\w\-.~+/=]+|\b[A-Za-z0-9_\-+/]{32,}={0,2}",
    re.IGNORECASE,
)
_LOGGED_CHARS = 300

# A 400 refuses a parameter when its code says so, or its text does (servers differ).
_REFUSAL_CODES = frozenset({"unsupported_parameter", "unsupported_value", "unknown_parameter"})
_REFUSAL_WORDS = re.compile(
    r"unsupported|unrecognized|not supported|unknown (?:parameter|field|argument)"
    r"|not permitted|not allowed|extra (?:inputs|fields)",
    re.IGNORECASE,
)
_TOKEN_PARAMS = ("max_tokens", "max_completion_tokens")
_AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")

# o1, o1-mini, o3, o3-pro, o4-mini, gpt-5, gpt-5.1, gpt-5-mini, gpt-5.2-chat-latest ...
_REASONING_MODEL = re.compile(r"(?:o\d+(?:-|$)|gpt-5)", re.IGNORECASE)


def is_reasoning_model(model: str) -> bool:
    """Whether ``model`` is named like one of OpenAI's reasoning models.

    Those refuse ``max_tokens`` and any ``temperature`` but the default, and think
    before they answer. The chat-tuned ``gpt-5*-chat-latest`` count too: they refuse
    a temperature as well. A provider prefix (``openai/o3`` on OpenRouter) is ignored.
    Open models that reason (DeepSeek-R1, Qwen3, gpt-oss) take the usual parameters,
    so they are not matched: their reasoning is recognised in the stream instead.
    """
    return bool(_REASONING_MODEL.match(model.rsplit("/", 1)[-1]))


def _status_error(status: int) -> UpstreamError:
    code, message = _STATUS_ERRORS.get(
        status, ("upstream_unavailable", "The model's server is unavailable; try again later.")
    )
    return UpstreamError(message, code=code)


def _redact(text: str) -> str:
    """An upstream's error text, fit for a log: keys removed, and cut short."""
    text = _SECRETS.sub("[redacted]", " ".join(text.split()))
    return text if len(text) <= _LOGGED_CHARS else text[:_LOGGED_CHARS] + "…"


def _error_fields(error: Any) -> tuple[str | None, str]:
    """The code and the message of an upstream's error object (or its bare text)."""
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        return (
            str(code) if code is not None else None,
            message if isinstance(message, str) else json.dumps(error)[:1000],
        )
    return None, str(error) if error is not None else ""


def _is_context_error(code: str | None, message: str) -> bool:
    return code in _CONTEXT_CODES or bool(_CONTEXT_WORDS.search(message))


def _http_error(exc: openai.APIStatusError) -> UpstreamError:
    """A refused request as a safe ``UpstreamError``; the upstream's own words go to the log."""
    code, message = _error_fields(exc.body if exc.body is not None else exc.message)
    logger.warning(
        "The model's server answered HTTP %s (code %s): %s",
        exc.status_code,
        code or "none",
        _redact(message),
    )
    if exc.status_code == 413 or (exc.status_code < 500 and _is_context_error(code, message)):
        return UpstreamError(_CONTEXT_TOO_LONG, code="context_too_long")
    return _status_error(exc.status_code)


def _stream_error(code: str | None, message: str) -> UpstreamError:
    """An error the upstream reported inside the stream, as a safe ``UpstreamError``."""
    logger.warning(
        "The model's server reported an error mid-reply (code %s): %s",
        code or "none",
        _redact(message),
    )
    if _is_context_error(code, message):
        return UpstreamError(_CONTEXT_TOO_LONG, code="context_too_long")
    if code in _STREAM_ERRORS:
        safe_code, safe_message = _STREAM_ERRORS[code]
        return UpstreamError(safe_message, code=safe_code)
    return UpstreamError(_MID_REPLY)


def _refused_param(exc: openai.APIStatusError, body: Mapping[str, Any]) -> str | None:
    """The parameter of ``body`` that a 400 refuses, if it refuses one."""
    if exc.status_code != 400:
        return None
    error = exc.body if isinstance(exc.body, dict) else {}
    text = str(exc.body or exc.message)
    refusal = error.get("code") in _REFUSAL_CODES or bool(_REFUSAL_WORDS.search(text))
    param = error.get("param")
    if isinstance(param, str) and refusal:
        name = re.split(r"[.\[]", param, maxsplit=1)[0]  # "reasoning.effort" -> "reasoning"
        if name in body:
            return name
    if "stream_options" in body and "stream_options" in text:
        return "stream_options"  # servers word this one every way
    if refusal:
        for name in body:
            if name not in ("model", "stream") and re.search(rf"\b{re.escape(name)}\b", text):
                return name
    return None


def _parse_usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if not (isinstance(prompt, int) and isinstance(completion, int)):
        return None
    details = raw.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    details = raw.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if cached is None:
        cached = raw.get("prompt_cache_hit_tokens")  # DeepSeek's name for it
    return Usage(
        prompt,
        completion,
        reasoning_tokens=reasoning if isinstance(reasoning, int) else None,
        cached_tokens=cached if isinstance(cached, int) else None,
    )


def parse_chunk(payload: dict[str, Any]) -> Chunk | None:
    """One ``chat.completion.chunk`` as a ``Chunk``; ``None`` when it carries nothing.

    Azure's first chunk (``prompt_filter_results``) and the ``include_usage``
    chunk both have empty ``choices``. Reasoning comes as ``delta.reasoning_content``
    (DeepSeek, vLLM, llama.cpp) or ``delta.reasoning`` (Ollama, OpenRouter); a server
    that sends both sends the same text twice, so the first one found is taken.
    """
    if "error" in payload and payload["error"]:
        raise _stream_error(*_error_fields(payload["error"]))
    text, reasoning, finish = "", "", None
    for choice in payload.get("choices") or ():
        if choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta") or {}
        text = delta.get("content") or ""
        thought = delta.get("reasoning_content") or delta.get("reasoning")
        reasoning = thought if isinstance(thought, str) else ""
        finish = choice.get("finish_reason")
    usage = _parse_usage(payload.get("usage"))
    if not text and not reasoning and finish is None and usage is None:
        return None
    return Chunk(text=text, reasoning=reasoning, finish_reason=finish, usage=usage)


@dataclass
class OpenAIProvider(Provider):
    """Chat Completions. ``OPTIONS`` are ``AsyncOpenAI`` keyword arguments (``api_key``,
    ``base_url``, ...) and chatstream's own, removed before the client is built:

    - ``transport``: ``"aiohttp"`` (default) or ``"httpx2"``.
    - ``max_tokens_param``: the name the output limit goes by, ``"max_completion_tokens"``
      or ``"max_tokens"``. Default: ``max_completion_tokens`` for OpenAI and Azure
      (reasoning models refuse the other), ``max_tokens`` for any other base URL, the
      name every compatible server (Ollama, vLLM, llama.cpp, DeepSeek) reads.
    """

    client_class: type[openai.AsyncOpenAI] = openai.AsyncOpenAI
    #: Chatstream's own OPTIONS, never passed to the client.
    own_options: ClassVar[frozenset[str]] = frozenset({"transport", "max_tokens_param"})
    _client: openai.AsyncOpenAI | None = field(default=None, init=False, repr=False)
    _stream_usage: bool = field(default=True, init=False, repr=False)
    _token_param: str | None = field(default=None, init=False, repr=False)
    #: Per model, the parameters the server refused; they are not sent again.
    _refused: dict[str, set[str]] = field(default_factory=dict, init=False, repr=False)

    def client_kwargs(self) -> dict[str, Any]:
        kwargs = {"timeout": _DEFAULT_TIMEOUT, **self.options}
        own = {name: kwargs.pop(name) for name in self.own_options if name in kwargs}
        self.configure(own)
        transport = own.get("transport", "aiohttp")
        if "http_client" not in kwargs:
            kwargs["http_client"] = _http_client(transport, kwargs["timeout"])
        # A local server (Ollama, vLLM) needs no key, but the SDK insists on one.
        if (
            kwargs.get("base_url")
            and not kwargs.get("api_key")
            and not os.environ.get("OPENAI_API_KEY")
        ):
            kwargs["api_key"] = "unused"
        return kwargs

    def configure(self, own: Mapping[str, Any]) -> None:
        """Read chatstream's own OPTIONS; called once, before the client is built."""
        name = own.get("max_tokens_param")
        if name is not None and name not in _TOKEN_PARAMS:
            raise ImproperlyConfigured(
                'Connection OPTIONS "max_tokens_param" must be "max_completion_tokens" '
                f'or "max_tokens", not {name!r}.'
            )
        self._token_param = name

    @property
    def client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            self._client = self.client_class(**self.client_kwargs())
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def sends(self, model: str, param: str) -> bool:
        """Whether ``param`` may go to ``model`` (its server has not refused it)."""
        return param not in self._refused.get(model, ())

    def token_param(self, model: str) -> str:
        """The name the output limit goes by for ``model`` on this connection."""
        client = self.client  # built first: it reads the max_tokens_param option
        name = self._token_param
        if name is None:
            host = client.base_url.host
            native = isinstance(client, openai.AsyncAzureOpenAI) or (
                host == "api.openai.com" or host.endswith(_AZURE_HOSTS)
            )
            name = "max_completion_tokens" if native else "max_tokens"
        if not self.sends(model, name):
            name = _TOKEN_PARAMS[1 - _TOKEN_PARAMS.index(name)]
        return name

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        model = request.model
        body: dict[str, Any] = {"model": model, "messages": request.messages, "stream": True}
        if self._stream_usage:
            body["stream_options"] = {"include_usage": True}
        if (
            request.temperature is not None
            and not is_reasoning_model(model)
            and self.sends(model, "temperature")
        ):
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body[self.token_param(model)] = request.max_tokens
        return body

    def _send(self, client: openai.AsyncOpenAI, body: dict[str, Any]) -> Any:
        """The SDK's streamed-response context manager for one request."""
        # The SDK walks what it is given through its TypedDict unions before sending:
        # about 7 ms of event-loop CPU for 40 turns, and 40 µs for the other parameters,
        # to change nothing in them. extra_body is merged after that walk, so all but
        # what create() requires skips it.
        completions = client.chat.completions.with_streaming_response
        return completions.create(model=body["model"], messages=[], stream=True, extra_body=body)

    def _learn(self, exc: openai.APIStatusError, body: Mapping[str, Any], model: str) -> bool:
        """Remember a parameter the server refused; ``True`` when asking again may help."""
        param = _refused_param(exc, body)
        refused = self._refused.setdefault(model, set())
        if param is None or param in refused:
            return False
        if param == "stream_options":
            self._stream_usage = False  # a property of the server, not of one model
        elif param in _TOKEN_PARAMS and set(_TOKEN_PARAMS) - refused - {param}:
            refused.add(param)  # token_param() now gives the other name
        elif param in ("temperature", "reasoning", "max_output_tokens"):
            refused.add(param)
        else:
            return False
        logger.info(
            "The model's server refused %r for model %r: asking again without it.", param, model
        )
        return True

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Chunk, None]:
        try:
            async with contextlib.AsyncExitStack() as stack:
                response = await self._open(stack, request)
                del request  # sent: the history is not kept for as long as the reply streams
                chunks = await stack.enter_async_context(contextlib.aclosing(self._read(response)))
                async for chunk in chunks:
                    yield chunk
        except openai.APIConnectionError as exc:
            if isinstance(exc, openai.APITimeoutError) and _timed_out(exc):
                raise _timeout() from None
            raise UpstreamError(
                "The model's server could not be reached.", code="upstream_unreachable"
            ) from None

    async def _open(
        self, stack: contextlib.AsyncExitStack, request: ChatRequest
    ) -> httpx2.Response:
        """Send the request; the stack closes the response, and with it the upstream.

        Only the HTTP response is kept, and without its request's body: the SDK's
        response and its context manager hold the options (the whole history, as
        dicts), the sent request its JSON. A long conversation's history would
        otherwise stay twice in memory for as long as the model is read.
        """
        client = self.client  # built first: it reads chatstream's OPTIONS the body needs
        for _ in range(_ATTEMPTS):
            body = self._body(request)
            try:
                # Closing the SDK's response is closing its HTTP response, and that alone.
                response = (await self._send(client, body).__aenter__()).http_response
            except openai.APIStatusError as exc:
                if not self._learn(exc, body, request.model):
                    raise _http_error(exc) from None
            else:
                stack.push_async_callback(response.aclose)
                sent = response.request  # past redirects: its body is never sent again
                response.request = httpx2.Request(sent.method, sent.url)
                return response
        raise UpstreamError("The model's server rejected the request.", code="upstream_bad_request")

    def _read(self, response: httpx2.Response) -> AsyncGenerator[Chunk, None]:
        return _events(response.aiter_bytes(), parse_chunk)  # no generator of its own per chunk


async def _events(
    body: AsyncIterator[bytes], parse: Callable[[dict[str, Any]], _T | None]
) -> AsyncGenerator[_T, None]:
    """``parse`` of the JSON objects of an event stream's ``data:`` lines, until ``[DONE]``.

    Parsed here, so that no frame keeps a decoded object (about 2 KB) for as long
    as the model is silent: only what ``parse`` made of it.
    """
    # Lines are split as bytes: "\n" never occurs inside a UTF-8 sequence, and
    # json.loads decodes UTF-8 itself, so the text and line decoders are skipped.
    pending = b""
    try:
        async for data in body:
            lines = (pending + data).split(b"\n")
            pending = lines.pop()
            for line in lines:
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments, "event:" lines
                data = line[5:].strip()
                if data == b"[DONE]":
                    await _drain(body)
                    return
                if (item := _parsed(data, parse)) is not None:
                    yield item
    except httpx2.TransportError as exc:
        if _timed_out(exc):
            raise _timeout() from None
        raise UpstreamError(
            "The connection to the model's server broke mid-reply.",
            code="upstream_incomplete",
        ) from None


def _parsed(data: bytes, parse: Callable[[dict[str, Any]], _T | None]) -> _T | None:
    try:
        payload = json.loads(data)
    except ValueError:
        logger.warning("Ignoring a malformed line from the model's server.")
        return None
    return parse(payload) if isinstance(payload, dict) else None


class _BoundedAiohttpTransport(AiohttpTransport):
    """The SDK's aiohttp transport, holding at most 32 KiB of a reply not yet parsed.

    aiohttp's default read buffer is 256 KiB, and a response stops reading only
    past twice that: a model that writes faster than the process parses left up
    to 512 KiB per reply in memory, and that peak stayed in the allocators (most
    of a stalled reader's RSS in ``bench/stalled_memory.py``). With a small
    buffer the socket holds the rest, and the model's server waits.
    """

    def get_client(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
            limit=self.limits.max_connections or 0,
        )
        return aiohttp.ClientSession(connector=connector, read_bufsize=READ_BUFFER)


def _http_client(transport: str, timeout: Any) -> httpx2.AsyncClient:
    if transport == "aiohttp":
        bounded = _BoundedAiohttpTransport(limits=openai.DEFAULT_CONNECTION_LIMITS)
        return openai.DefaultAioHttpClient(timeout=timeout, transport=bounded)
    if transport == "httpx2":
        return openai.DefaultAsyncHttpxClient(timeout=timeout)
    raise ImproperlyConfigured(
        f'Connection OPTIONS "transport" must be "aiohttp" or "httpx2", not {transport!r}.'
    )


def _timeout() -> UpstreamError:
    return UpstreamError("The model's server timed out.", code="upstream_timeout")


def _timed_out(exc: BaseException | None) -> bool:
    """Whether a timeout caused ``exc``.

    The SDK's aiohttp transport reports a refused connection as ``ConnectTimeout``
    too, so the cause chain decides between "timed out" and "unreachable".
    """
    while exc is not None:
        if isinstance(exc, TimeoutError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


async def _drain(body: AsyncIterator[bytes]) -> None:
    """Read the body to its end, as the SDK's own streams do after ``[DONE]``.

    A body closed before its end closes its connection too: every reply would
    then pay a new TCP (and TLS) handshake. A server that holds the body open
    after ``[DONE]`` is given up on after a short while.
    """
    with contextlib.suppress(TimeoutError, httpx2.TransportError):
        async with asyncio.timeout(_DRAIN_TIMEOUT):
            async for _ in body:
                pass


@dataclass
class AzureOpenAIProvider(OpenAIProvider):
    """``OPTIONS`` are ``AsyncAzureOpenAI`` kwargs; the model is the deployment name."""

    client_class: type[openai.AsyncOpenAI] = openai.AsyncAzureOpenAI


#: The Responses API refuses a smaller ``max_output_tokens`` (integer_below_min_value).
_MIN_OUTPUT_TOKENS = 16


@dataclass
class OpenAIResponsesProvider(OpenAIProvider):
    """The Responses API (``POST /v1/responses``), where OpenAI streams reasoning summaries.

    ``OPTIONS`` are ``AsyncOpenAI`` keyword arguments and chatstream's own:

    - ``transport``: as for ``OpenAIProvider``.
    - ``store``: whether OpenAI keeps the response (default ``False``: chatstream
      keeps the conversation itself, and sends all of it every time).
    - ``reasoning``: the ``reasoning`` object, e.g. ``{"effort": "low", "summary":
      "detailed"}``, merged over ``{"summary": "auto"}`` and then sent for every model
      of the connection (an Azure deployment's name does not tell its family).
      Absent: ``{"summary": "auto"}`` for models named like reasoning models only.
      ``None``: never sent.
    """

    own_options: ClassVar[frozenset[str]] = frozenset({"transport", "store", "reasoning"})
    _store: bool = field(default=False, init=False, repr=False)
    _reasoning: dict[str, Any] | None = field(default=None, init=False, repr=False)
    _reasoning_set: bool = field(default=False, init=False, repr=False)

    def configure(self, own: Mapping[str, Any]) -> None:
        store = own.get("store", False)
        if not isinstance(store, bool):
            raise ImproperlyConfigured(
                f'Connection OPTIONS "store" must be True or False, not {store!r}.'
            )
        self._store = store
        self._reasoning_set = "reasoning" in own
        reasoning = own.get("reasoning")
        if reasoning is not None and not isinstance(reasoning, Mapping):
            raise ImproperlyConfigured(
                'Connection OPTIONS "reasoning" must be a dict such as '
                f'{{"effort": "low", "summary": "auto"}}, or None, not {reasoning!r}.'
            )
        self._reasoning = {"summary": "auto", **reasoning} if reasoning is not None else None

    def reasoning_for(self, model: str) -> dict[str, Any] | None:
        """The ``reasoning`` object to send for ``model``, if any."""
        if self._reasoning_set:
            return self._reasoning
        return {"summary": "auto"} if is_reasoning_model(model) else None

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        model = request.model
        body: dict[str, Any] = {
            "model": model,
            "input": input_items(request.messages),
            "stream": True,
            "store": self._store,
        }
        if request.max_tokens is not None and self.sends(model, "max_output_tokens"):
            body["max_output_tokens"] = max(request.max_tokens, _MIN_OUTPUT_TOKENS)
        if (
            request.temperature is not None
            and not is_reasoning_model(model)
            and self.sends(model, "temperature")
        ):
            body["temperature"] = request.temperature
        reasoning = self.reasoning_for(model)
        if reasoning and self.sends(model, "reasoning"):
            body["reasoning"] = reasoning
        return body

    def _send(self, client: openai.AsyncOpenAI, body: dict[str, Any]) -> Any:
        # As for Chat Completions: the body skips the SDK's transform.
        responses = client.responses.with_streaming_response
        return responses.create(model=body["model"], stream=True, extra_body=body)

    async def _read(self, response: httpx2.Response) -> AsyncGenerator[Chunk, None]:
        body = response.aiter_bytes()
        parsed: AsyncGenerator[Chunk | StreamFailure, None] = _events(body, parse_event)
        async with contextlib.aclosing(parsed) as events:
            async for event in events:
                if isinstance(event, StreamFailure):
                    raise _stream_error(event.code, event.message)
                yield event
                if event.finish_reason is not None:
                    # The response is whole; its body ends next (no [DONE] here).
                    await _drain(body)
                    return


@dataclass
class AzureOpenAIResponsesProvider(OpenAIResponsesProvider):
    """The Responses API on Azure: ``AsyncAzureOpenAI`` kwargs (an ``api_version`` that
    has it, e.g. ``2025-04-01-preview``); the model is the deployment name."""

    client_class: type[openai.AsyncOpenAI] = openai.AsyncAzureOpenAI
