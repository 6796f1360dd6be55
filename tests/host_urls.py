"""A host project's URLconf that takes chatstream's API alone, and streams a reply
into a view of its own through the Python API."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from django.http import HttpRequest, StreamingHttpResponse
from django.urls import include, path

from chatstream import api


async def typewriter(request: HttpRequest, reply_id: uuid.UUID) -> StreamingHttpResponse:
    async def body() -> AsyncIterator[bytes]:
        async for part in api.follow(reply_id):
            if isinstance(part, api.Text):
                yield part.text.encode() if part.kind == "answer" else b""
            else:
                yield f"\n[{part.status}]".encode()

    return StreamingHttpResponse(body(), content_type="text/plain; charset=utf-8")


urlpatterns = [
    path("host/", include("chatstream.urls.api")),
    path("mine/<uuid:reply_id>/", typewriter),
]
