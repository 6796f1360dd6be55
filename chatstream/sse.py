"""Server-Sent Events encoding: values in, bytes out, no I/O."""

from __future__ import annotations

import json
from typing import Any


def _lines(field: str, value: str) -> str:
    # A field value cannot hold a line break: each line becomes its own field line.
    return "".join(f"{field}: {line}\n" for line in value.replace("\r\n", "\n").split("\n"))


def encode(
    data: str | None = None, *, event: str | None = None, id: int | str | None = None
) -> bytes:
    out = ""
    if id is not None:
        out += f"id: {id}\n"
    if event is not None:
        out += f"event: {event}\n"
    if data is not None:
        out += _lines("data", data)
    return (out + "\n").encode()


def encode_json(value: Any, *, event: str, id: int | None = None) -> bytes:
    return encode(json.dumps(value, ensure_ascii=False, separators=(",", ":")), event=event, id=id)


def comment(text: str) -> bytes:
    return (_lines("", text) + "\n").encode()


def retry(milliseconds: int) -> bytes:
    return f"retry: {int(milliseconds)}\n\n".encode()


def delta(text: str, end: int, event: str = "delta") -> bytes:
    """Reply text; ``event`` is ``reasoning`` for the model's reasoning."""
    return encode_json({"text": text}, event=event, id=end)
