"""The Responses API's wire format, pure: chat messages in, typed stream events out.

No I/O and no SDK here: ``chatstream.providers.openai`` sends the request and reads
the event stream, then hands each event's JSON to ``parse_event``. A failure is
returned as a ``StreamFailure`` value rather than raised, so that one place (the
provider) turns every upstream failure, of either API, into a safe ``UpstreamError``
and logs it.

Events (each has ``type`` and ``sequence_number``) that matter to a chat reply:
``response.output_text.delta`` and ``response.refusal.delta`` are answer text;
``response.reasoning_summary_text.delta`` and ``response.reasoning_text.delta`` are
reasoning; ``response.completed``, ``response.incomplete`` and ``response.failed``
end the response and carry it whole (its ``usage``, ``incomplete_details`` or
``error``); an ``error`` event ends the stream too. Everything else (created,
in_progress, output_item and content_part bookkeeping, the ``.done`` events that
repeat the text) is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chatstream.providers.base import Chunk, Usage

#: Input roles the Responses API takes as plain ``{"role", "content"}`` messages.
_ROLES = frozenset({"user", "assistant", "system", "developer"})

#: ``incomplete_details.reason`` as a Chat Completions ``finish_reason``.
_INCOMPLETE = {"max_output_tokens": "length"}

_TEXT_EVENTS = frozenset({"response.output_text.delta", "response.refusal.delta"})
_REASONING_EVENTS = frozenset(
    {"response.reasoning_summary_text.delta", "response.reasoning_text.delta"}
)


@dataclass(frozen=True)
class StreamFailure:
    """The upstream ended the response with an error: its own code and message (unsafe)."""

    code: str | None
    message: str


def input_items(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """Chat messages as Responses ``input`` items, in order, the system prompt included.

    Every role the chat uses is a valid input message role, so the conversation goes
    out as it is: the system prompt stays a ``system`` item rather than moving to
    ``instructions``, which keeps its place and its exact text.
    """
    items = []
    for message in messages:
        role = message.get("role", "user")
        items.append({"role": role if role in _ROLES else "user", "content": message["content"]})
    return items


def parse_usage(raw: Any) -> Usage | None:
    """A Responses ``usage`` object (``input_tokens``, ``output_tokens`` and their details)."""
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("input_tokens"), raw.get("output_tokens")
    if not (isinstance(prompt, int) and isinstance(completion, int)):
        return None
    output = raw.get("output_tokens_details")
    reasoning = output.get("reasoning_tokens") if isinstance(output, dict) else None
    inputs = raw.get("input_tokens_details")
    cached = inputs.get("cached_tokens") if isinstance(inputs, dict) else None
    return Usage(
        prompt,
        completion,
        reasoning_tokens=reasoning if isinstance(reasoning, int) else None,
        cached_tokens=cached if isinstance(cached, int) else None,
    )


def parse_event(payload: Mapping[str, Any]) -> Chunk | StreamFailure | None:
    """One stream event as a ``Chunk``, a ``StreamFailure``, or ``None`` when it carries nothing.

    A chunk with a ``finish_reason`` ends the response: ``response.completed`` is
    ``"stop"``, ``response.incomplete`` is ``"length"`` when the output budget ran out
    and otherwise its reason (``"content_filter"``).
    """
    kind = payload.get("type")
    if kind in _TEXT_EVENTS or kind in _REASONING_EVENTS:
        delta = payload.get("delta")
        if not isinstance(delta, str) or not delta:
            return None
        return Chunk(text=delta) if kind in _TEXT_EVENTS else Chunk(reasoning=delta)
    if kind == "response.reasoning_summary_part.added" and payload.get("summary_index"):
        # A summary comes in parts (one per paragraph heading); keep them apart.
        return Chunk(reasoning="\n\n")
    if kind in ("response.completed", "response.incomplete"):
        response = payload.get("response")
        response = response if isinstance(response, dict) else {}
        usage = parse_usage(response.get("usage"))
        if kind == "response.completed":
            return Chunk(finish_reason="stop", usage=usage)
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        reason = reason if isinstance(reason, str) and reason else "max_output_tokens"
        return Chunk(finish_reason=_INCOMPLETE.get(reason, reason), usage=usage)
    if kind == "response.failed":
        response = payload.get("response")
        error = response.get("error") if isinstance(response, dict) else None
        return _failure(error if isinstance(error, dict) else {})
    if kind == "error":
        return _failure(payload)
    return None


def _failure(error: Mapping[str, Any]) -> StreamFailure:
    code, message = error.get("code"), error.get("message")
    return StreamFailure(
        code=str(code) if code is not None else None,
        message=message if isinstance(message, str) else "",
    )
