"""Providers on the ``openai`` SDK: OpenAI, any OpenAI-compatible server, and Azure OpenAI.

Deliberately not the SDK's own ``AsyncStream``: building its objects costs about
55 µs of CPU per chunk, against about 3 µs to ``json.loads`` the SSE line. We use
``with_streaming_response`` (which keeps the SDK's auth, retries and Azure
handling) and parse the raw lines ourselves, so ``[DONE]``, in-stream
``{"error": ...}`` payloads and raw ``httpx2`` transport errors are handled here.

The HTTP transport is the SDK's own aiohttp one (``openai[aiohttp]``) unless the
options say ``"transport": "httpx2"``: httpx2's anyio streams arm a cancel scope
and re-register the socket with epoll on every read, which cost more CPU per
relayed token than everything else chatstream does with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
from django.core.exceptions import ImproperlyConfigured

from chatstream.exceptions import UpstreamError
from chatstream.providers.base import ChatRequest, Chunk, Provider, Usage

logger = logging.getLogger(__name__)

_DEFAULT_TIMEOUT = httpx2.Timeout(120.0, connect=10.0)
_DRAIN_TIMEOUT = 2.0  # seconds to wait for a body's end after [DONE]

# Fixed, safe texts: an upstream's own message may echo part of a key or a prompt.
_STATUS_ERRORS = {
    400: ("upstream_bad_request", "The model's server rejected the request."),
    401: ("upstream_auth", "The model's server refused the credentials."),
    403: ("upstream_auth", "The model's server refused the credentials."),
    404: ("upstream_not_found", "The model or deployment was not found on the server."),
    408: ("upstream_timeout", "The model's server timed out."),
    413: ("upstream_bad_request", "The conversation is too long for the model."),
    422: ("upstream_bad_request", "The model's server rejected the request."),
    429: ("upstream_rate_limited", "The model's server is rate limiting; try again shortly."),
}


def _status_error(status: int) -> UpstreamError:
    code, message = _STATUS_ERRORS.get(
        status, ("upstream_unavailable", "The model's server is unavailable; try again later.")
    )
    return UpstreamError(message, code=code)


def _parse_usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        return Usage(prompt, completion)
    return None


def parse_chunk(payload: dict[str, Any]) -> Chunk | None:
    """One ``chat.completion.chunk`` as a ``Chunk``; ``None`` when it carries nothing.

    Azure's first chunk (``prompt_filter_results``) and the ``include_usage``
    chunk both have empty ``choices``.
    """
    if "error" in payload and payload["error"]:
        raise UpstreamError("The model's server reported an error mid-reply.")
    text, finish = "", None
    for choice in payload.get("choices") or ():
        if choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta") or {}
        text = delta.get("content") or ""
        finish = choice.get("finish_reason")
    usage = _parse_usage(payload.get("usage"))
    if not text and finish is None and usage is None:
        return None
    return Chunk(text=text, finish_reason=finish, usage=usage)


@dataclass
class OpenAIProvider(Provider):
    """``OPTIONS`` are ``AsyncOpenAI`` keyword arguments (``api_key``, ``base_url``, ...)."""

    client_class: type[openai.AsyncOpenAI] = openai.AsyncOpenAI
    _client: openai.AsyncOpenAI | None = field(default=None, init=False, repr=False)
    _stream_usage: bool = field(default=True, init=False, repr=False)

    def client_kwargs(self) -> dict[str, Any]:
        kwargs = {"timeout": _DEFAULT_TIMEOUT, **self.options}
        transport = kwargs.pop("transport", "aiohttp")
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

    @property
    def client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            self._client = self.client_class(**self.client_kwargs())
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "stream": True,
        }
        if self._stream_usage:
            body["stream_options"] = {"include_usage": True}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        return body

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        try:
            async with contextlib.AsyncExitStack() as stack:
                response = await self._open(stack, request)
                async for chunk in self._read(response):
                    yield chunk
        except openai.APIConnectionError as exc:
            if isinstance(exc, openai.APITimeoutError) and _timed_out(exc):
                raise _timeout() from None
            raise UpstreamError(
                "The model's server could not be reached.", code="upstream_unreachable"
            ) from None

    async def _open(self, stack: contextlib.AsyncExitStack, request: ChatRequest) -> Any:
        """Send the request; the stack closes the response, and with it the upstream."""
        completions = self.client.chat.completions.with_streaming_response
        body = self._body(request)
        # The SDK walks every message through its TypedDict unions before sending: about
        # 7 ms of event-loop CPU for 40 turns, to change nothing in plain role/content
        # dicts. extra_body is merged after that walk, so the messages skip it.
        messages = body.pop("messages")
        try:
            return await stack.enter_async_context(
                completions.create(**body, messages=[], extra_body={"messages": messages})
            )
        except openai.APIStatusError as exc:
            # Some OpenAI-compatible servers refuse ``stream_options``: ask once more without.
            if (
                exc.status_code == 400
                and self._stream_usage
                and "stream_options" in str(exc.body or exc.message)
            ):
                self._stream_usage = False
                return await self._open(stack, request)
            logger.warning("The model's server answered HTTP %s.", exc.status_code)
            raise _status_error(exc.status_code) from None

    async def _read(self, response: Any) -> AsyncIterator[Chunk]:
        # Lines are split as bytes: "\n" never occurs inside a UTF-8 sequence, and
        # json.loads decodes UTF-8 itself, so the text and line decoders are skipped.
        pending = b""
        body = response.http_response.aiter_bytes()
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
                    try:
                        payload = json.loads(data)
                    except ValueError:
                        logger.warning("Ignoring a malformed line from the model's server.")
                        continue
                    if isinstance(payload, dict) and (chunk := parse_chunk(payload)):
                        yield chunk
        except httpx2.TransportError as exc:
            if _timed_out(exc):
                raise _timeout() from None
            raise UpstreamError(
                "The connection to the model's server broke mid-reply.",
                code="upstream_incomplete",
            ) from None


def _http_client(transport: str, timeout: Any) -> httpx2.AsyncClient:
    if transport == "aiohttp":
        return openai.DefaultAioHttpClient(timeout=timeout)
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
