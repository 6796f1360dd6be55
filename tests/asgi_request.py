"""One HTTP request straight through an ASGI application, as a server would send it."""

from __future__ import annotations

from typing import Any

from asgiref.testing import ApplicationCommunicator


def http_scope(method: str, path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    sent = {"host": "testserver", **(headers or {})}
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 40000), "server": ("testserver", 80),
        "headers": [(k.encode(), v.encode()) for k, v in sent.items()],
    }  # fmt: skip


async def asgi(
    app: Any, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request."""
    communicator = ApplicationCommunicator(app, http_scope(method, path, headers))
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(10)
    body = b""
    while True:
        message = await communicator.receive_output(10)
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await communicator.wait(10)
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body
