"""A small HTTP client for tests: a session with its CSRF token, JSON calls, SSE parsing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2


@dataclass
class Event:
    event: str | None
    data: Any
    id: int | None
    comment: str | None = None


def parse_events(lines: Iterator[str]) -> Iterator[Event]:
    """Server-Sent Events from lines; comments come out as their own ``Event``."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in fields or "event" in fields:
                raw_id = fields.get("id")
                yield Event(
                    fields.get("event"),
                    json.loads(fields["data"]) if "data" in fields else None,
                    int(raw_id) if raw_id is not None else None,
                )
            fields = {}
        elif line.startswith(":"):
            yield Event(None, None, None, comment=line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data" and "data" in fields:
                fields["data"] += "\n" + value
            else:
                fields[name] = value


class ApiClient:
    """One browser-like session against a live server."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx2.Client(base_url=base_url, timeout=30)
        self.token = ""

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def csrf(self) -> str:
        if not self.token:
            self.http.get("/")
            self.token = self.http.cookies["csrftoken"]
        return self.token

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> httpx2.Response:
        headers = {"X-CSRFToken": self.csrf(), **kwargs.pop("headers", {})}
        if body is not None:
            kwargs["content"] = body if isinstance(body, bytes | str) else json.dumps(body)
            headers["Content-Type"] = "application/json"
        return self.http.request(method, path, headers=headers, **kwargs)

    def conversation(self, **body: Any) -> dict[str, Any]:
        response = self.call("POST", "/api/conversations/", body)
        assert response.status_code == 201, response.text
        return response.json()

    def send(self, conversation_id: str, content: str) -> dict[str, Any]:
        response = self.call(
            "POST", f"/api/conversations/{conversation_id}/messages/", {"content": content}
        )
        assert response.status_code == 201, response.text
        return response.json()

    def start(self, content: str) -> dict[str, Any]:
        """A new conversation with one message sent; returns the 201's body."""
        return self.send(self.conversation()["id"], content)

    def events(self, url: str, **kwargs: Any) -> Iterator[Event]:
        """Every event of a stream until ``done`` (or until the caller stops iterating)."""
        with self.http.stream("GET", url, **kwargs) as response:
            assert response.status_code == 200, response.read()
            for event in parse_events(response.iter_lines()):
                yield event
                if event.event == "done":
                    return

    def read_all(self, url: str, **kwargs: Any) -> list[Event]:
        return list(self.events(url, **kwargs))
