"""The one JSON shape of each model, used by every endpoint, SSE and WebSocket alike."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from chatstream.models import Assistant, Conversation, Message


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def message_payload(message: Message) -> dict[str, Any]:
    usage = None
    if message.prompt_tokens is not None or message.completion_tokens is not None:
        usage = {
            "prompt_tokens": message.prompt_tokens,
            "completion_tokens": message.completion_tokens,
            "reasoning_tokens": message.reasoning_tokens,
            "cached_tokens": message.cached_tokens,
            "estimated": message.usage_estimated,
        }
    cost = None
    if message.cost is not None:
        cost = {"amount": str(message.cost), "currency": message.cost_currency}
    error = None
    if message.error_code:
        error = {"code": message.error_code, "message": message.error_message}
    return {
        "id": str(message.id),
        "conversation": str(message.conversation_id),
        "role": message.role,
        "content": message.content,
        "reasoning": message.reasoning,
        "status": message.status,
        "model": message.model,
        "finish_reason": message.finish_reason or None,
        "usage": usage,
        "cost": cost,
        "ttft_ms": message.ttft_ms,
        "duration_ms": message.duration_ms,
        "error": error,
        "offset": len(message.content) + len(message.reasoning),
        # The version this one replaced (an edit, a regeneration): GET .../versions/.
        "previous": str(message.previous_id) if message.previous_id else None,
        "created_at": _iso(message.created_at),
        "finished_at": _iso(message.finished_at),
    }


def assistant_payload(assistant: Assistant, *, model: str, is_demo: bool) -> dict[str, Any]:
    return {
        "slug": assistant.slug,
        "name": assistant.name,
        "model": model,
        "is_default": assistant.is_default,
        "is_demo": is_demo,
    }


def conversation_payload(
    conversation: Conversation, messages: list[Message] | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(conversation.id),
        "title": conversation.title,
        "assistant": conversation.assistant.slug if conversation.assistant else None,
        "created_at": _iso(conversation.created_at),
        "updated_at": _iso(conversation.updated_at),
    }
    if messages is not None:
        data["messages"] = [message_payload(m) for m in messages]
    return data
