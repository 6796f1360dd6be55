"""The ASGI lifespan: its shutdown finalises in-flight replies, after a signal's or alone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from django.test import AsyncClient, override_settings

from chatstream.generation import registry
from chatstream.lifespan import LifespanHandler
from chatstream.models import Message, Status
from chatstream.providers.demo import demo_reply
from tests.test_ending import Refusal, refuse_final_writes, wait_for  # noqa: F401
from tests.test_views import SLOW_DEMO, new_conversation, send

pytestmark = pytest.mark.django_db(transaction=True)


async def lifespan(*messages: str) -> list[dict[str, Any]]:
    """Run the lifespan through ``messages`` (``startup``, ``shutdown``); what it sent."""
    incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for message in messages:
        incoming.put_nowait({"type": f"lifespan.{message}"})
    sent: list[dict[str, Any]] = []

    async def collect(message: Any) -> None:
        sent.append(message)

    scope: Any = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
    await asyncio.wait_for(LifespanHandler()(scope, incoming.get, collect), 20)
    return sent


async def streaming_reply(client: AsyncClient) -> tuple[str, Any]:
    """A slow reply, and its open event stream once a first delta came out of it."""
    started = await send(client, await new_conversation(client))
    response = await client.get(started["stream_url"])
    stream = aiter(response)
    while b"event: delta" not in await anext(stream):
        pass
    return started["assistant_message"]["id"], stream


async def test_lifespan_shutdown_finalises_in_flight_replies_as_interrupted() -> None:
    with override_settings(CHATSTREAM=SLOW_DEMO):
        reply_id, stream = await streaming_reply(AsyncClient())
        try:
            sent = await lifespan("startup", "shutdown")
            reply = await Message.objects.aget(pk=reply_id)
        finally:
            await stream.aclose()
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
    assert reply.status == Status.INTERRUPTED
    assert 0 < len(reply.content) < len(demo_reply("hello"))


async def test_a_second_shutdown_does_not_cut_short_the_ending_of_the_first(
    refuse_final_writes: Refusal,  # noqa: F811
) -> None:
    """SIGTERM's shutdown, then the lifespan's, while the row's final write is retried."""

    async def retrying() -> bool:
        return refuse_final_writes.refused > 0

    with override_settings(CHATSTREAM={**SLOW_DEMO, "SHUTDOWN_GRACE": 0.1}):
        reply_id, stream = await streaming_reply(AsyncClient())
        try:
            with refuse_final_writes:
                on_signal = asyncio.ensure_future(registry.shutdown(timeout=0))
                await wait_for(retrying)
                sent = await lifespan("shutdown")
            await registry.wait(reply_id, timeout=20)
            await on_signal
            reply = await Message.objects.aget(pk=reply_id)
        finally:
            await stream.aclose()
    assert sent == [{"type": "lifespan.shutdown.complete"}]
    assert reply.status == Status.INTERRUPTED
    assert 0 < len(reply.content) < len(demo_reply("hello"))
