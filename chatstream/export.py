"""A conversation as a file to download: Markdown for people, JSON (the API's shapes)."""

from __future__ import annotations

import json
import re

from chatstream.models import Conversation, Message, Role
from chatstream.serializers import conversation_payload

FORMATS = {"md": "text/markdown; charset=utf-8", "json": "application/json"}


def filename(conversation: Conversation, fmt: str) -> str:
    """A safe file name from the title (ASCII letters, digits and dashes)."""
    stem = re.sub(r"[^A-Za-z0-9]+", "-", conversation.title).strip("-")[:60].lower()
    return f"{stem or 'conversation'}-{str(conversation.pk)[:8]}.{fmt}"


def as_json(conversation: Conversation, messages: list[Message]) -> str:
    return json.dumps(conversation_payload(conversation, messages), ensure_ascii=False, indent=2)


def as_markdown(conversation: Conversation, messages: list[Message]) -> str:
    lines = [f"# {conversation.title or 'Conversation'}", ""]
    for message in messages:
        when = message.created_at.strftime("%Y-%m-%d %H:%M UTC") if message.created_at else ""
        if message.role == Role.USER:
            lines += [f"## You · {when}", "", message.content, ""]
            continue
        label = "Assistant" + (f" ({message.model})" if message.model else "")
        lines += [f"## {label} · {when}", ""]
        if message.reasoning:
            quoted = "\n".join(f"> {line}" for line in message.reasoning.splitlines())
            lines += ["> **Thinking**", ">", quoted, ""]
        lines += [message.content, ""]
        if message.status != "complete":
            lines += [f"*({message.status})*", ""]
    return "\n".join(lines).rstrip() + "\n"
