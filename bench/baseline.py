"""The baseline: the relay a Django developer would write first.

An async view returns a ``StreamingHttpResponse`` over an async generator that
iterates the openai SDK's stream and yields each delta as an SSE event: no
reply log, no persistence, no coalescing, one send per token. It is measured on
the same server, with the same settings and middleware, as chatstream.
"""

from __future__ import annotations

import json
import os
import resource
import tracemalloc
from collections.abc import AsyncIterator

import openai
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse

from bench.prepare import earlier_turns
from bench.settings import WRITES

_client: openai.AsyncOpenAI | None = None


def _openai() -> openai.AsyncOpenAI:
    global _client
    if _client is None:
        _client = openai.AsyncOpenAI(
            base_url=os.environ["OPENAI_BASE_URL"], api_key=os.environ["OPENAI_API_KEY"]
        )
    return _client


async def _events(prompt: str, turns: int) -> AsyncIterator[str]:
    stream = await _openai().chat.completions.create(
        model=os.environ.get("CHATSTREAM_MODEL", "bench-model"),
        messages=[*earlier_turns(turns), {"role": "user", "content": prompt}],
        stream=True,
    )
    offset = 0
    finish_reason = None
    async for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        if choice.delta.content:
            offset += len(choice.delta.content)
            data = json.dumps({"text": choice.delta.content})
            yield f"id: {offset}\nevent: delta\ndata: {data}\n\n"
        if choice.finish_reason:
            finish_reason = choice.finish_reason
    data = json.dumps({"status": "complete", "finish_reason": finish_reason})
    yield f"id: {offset}\nevent: done\ndata: {data}\n\n"


async def stream(request: HttpRequest) -> HttpResponse:
    response = StreamingHttpResponse(
        _events(request.GET.get("prompt", ""), int(request.GET.get("turns", 0))),
        content_type="text/event-stream",
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


_snapshot: list[tracemalloc.Snapshot] = []


def _allocations() -> list[str]:
    """The biggest growths since the previous call (``PYTHONTRACEMALLOC`` servers only)."""
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    previous, _snapshot[:] = _snapshot[:1], [snapshot]
    if not previous:
        return []
    return [str(stat) for stat in snapshot.compare_to(previous[0], "lineno")[:25]]


async def stats(request: HttpRequest) -> HttpResponse:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    payload = {"writes": dict(WRITES), "maxrss_kb": usage.ru_maxrss}
    if tracemalloc.is_tracing() and "allocations" in request.GET:
        payload["allocations"] = _allocations()
    return JsonResponse(payload)
