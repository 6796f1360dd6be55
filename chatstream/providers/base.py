"""The provider contract: turn a chat request into a stream of ``Chunk`` values.

A provider's ``stream()`` is an async generator. The generation always closes it
(``aclose()``) when a reply ends early, so an implementation must release the
upstream request in its own ``finally``/``async with``: a bare ``break`` would
leave the model generating, and its tokens paid for. Nor should it keep the
request once it is sent: its history may be most of a long reply's memory.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    #: Of ``completion_tokens``, those the model spent thinking (``None``: not reported).
    reasoning_tokens: int | None = None
    #: Of ``prompt_tokens``, those served from the upstream's prompt cache.
    cached_tokens: int | None = None


@dataclass(frozen=True)
class Chunk:
    """A piece of a reply: new answer text and/or reasoning, how it finished, the usage."""

    text: str = ""
    #: The model's reasoning (or a summary of it), streamed before and between answer text.
    reasoning: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass
class Provider(abc.ABC):
    """Built once per connection (and event loop) from ``CONNECTIONS[name]``."""

    options: Mapping[str, Any] = field(default_factory=dict)
    #: Shown to people so an offline demo is never mistaken for a real model.
    is_demo = False

    @abc.abstractmethod
    def stream(self, request: ChatRequest) -> AsyncGenerator[Chunk, None]:
        """Yield chunks until the model finishes; raise ``UpstreamError`` on failure.

        Ending without a chunk that carries ``finish_reason`` means the reply was
        cut: the generation records that as ``upstream_incomplete``.
        """

    async def aclose(self) -> None:  # noqa: B027 (optional hook)
        """Release pooled connections; called when the provider is discarded."""
