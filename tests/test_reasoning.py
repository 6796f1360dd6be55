"""Reasoning, the second kind of reply text: streamed, resumed, stopped and stored.

Driven through the real openai SDK against the fake server: Chat Completions'
``reasoning_content`` and ``reasoning`` deltas, and the Responses API's reasoning
summary events.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.test import AsyncClient, override_settings

from chatstream.generation import registry
from chatstream.models import Message, Status
from tests.fake_openai import FakeOpenAI, Script
from tests.sse_client import Event, parse_events
from tests.test_consumers import until_done, websocket
from tests.test_generation import upstream
from tests.test_views import new_conversation, post, send, stream_text

pytestmark = pytest.mark.django_db(transaction=True)

THOUGHTS = ["The user ", "greets me; ", "I greet 👋 back."]
ANSWER = ["Hello", ", ", "world", "!"]


def responses(fake: FakeOpenAI) -> dict[str, Any]:
    settings = upstream(fake)
    settings["CONNECTIONS"]["default"] = {
        **settings["CONNECTIONS"]["default"],
        "BACKEND": "chatstream.providers.openai.OpenAIResponsesProvider",
        "MODEL": "o4-mini",
    }
    return settings


def kinds(events: list[Event]) -> list[tuple[str, str]]:
    """Adjacent events of one kind joined: the reply's parts as a reader saw them."""
    parts: list[tuple[str, str]] = []
    for event in events:
        if event.event in ("reasoning", "delta"):
            if parts and parts[-1][0] == event.event:
                parts[-1] = (event.event, parts[-1][1] + event.data["text"])
            else:
                parts.append((event.event, event.data["text"]))
    return parts


@pytest.mark.parametrize("api", ["chat:reasoning_content", "chat:reasoning", "responses"])
async def test_reasoning_streams_before_the_answer_and_is_stored(
    fake_openai: FakeOpenAI, api: str
) -> None:
    field = api.partition(":")[2] or "reasoning_content"
    trigger = fake_openai.script(
        f"think-{uuid.uuid4().hex}",
        Script(reasoning=THOUGHTS, tokens=ANSWER, reasoning_field=field, interval=0.01),
    )
    settings = responses(fake_openai) if api == "responses" else upstream(fake_openai)
    with override_settings(CHATSTREAM=settings):
        client = AsyncClient()
        started = await send(client, await new_conversation(client), trigger)
        _, events = await stream_text(client, started["stream_url"])
        await registry.wait(started["assistant_message"]["id"], timeout=20)
    thought, answer = "".join(THOUGHTS), "".join(ANSWER)
    assert kinds(events) == [("reasoning", thought), ("delta", answer)]
    # One offset over both kinds: ids grow by every code point, reasoning included.
    ids = [e.id for e in events if e.event in ("reasoning", "delta")]
    assert ids == sorted(ids) and ids[-1] == len(thought) + len(answer)
    done = events[-1]
    assert (done.event, done.id, done.data["status"]) == ("done", len(thought + answer), "complete")
    assert done.data["message"]["reasoning"] == thought
    assert done.data["message"]["offset"] == len(thought + answer)
    row = await Message.objects.aget(pk=started["assistant_message"]["id"])
    assert (row.reasoning, row.content) == (thought, answer)
    assert row.ttft_ms is not None
    if api != "chat:reasoning":
        assert row.reasoning_tokens is not None and row.reasoning_tokens > 0


async def test_resuming_mid_reasoning_yields_exactly_the_rest_of_both_kinds(
    fake_openai: FakeOpenAI,
) -> None:
    thoughts = [f"step {i}. " for i in range(6)]
    trigger = fake_openai.script(
        f"mixed-{uuid.uuid4().hex}",
        Script(reasoning=thoughts, tokens=ANSWER * 3, interleave=True, interval=0.01),
    )
    with override_settings(CHATSTREAM=upstream(fake_openai)):
        client = AsyncClient()
        started = await send(client, await new_conversation(client), trigger)
        _, whole = await stream_text(client, started["stream_url"])
        await registry.wait(started["assistant_message"]["id"], timeout=20)
        parts = kinds(whole)
        assert len(parts) > 2  # interleaved
        flat = [(kind, ch) for kind, text in parts for ch in text]
        # Every offset, now that the row holds the reply (served from the database).
        for offset in (0, 3, len(parts[0][1]), len(parts[0][1]) + 1, len(flat) - 1, len(flat)):
            _, rest = await stream_text(
                client, started["stream_url"], headers={"Last-Event-ID": str(offset)}
            )
            expected = [(k, ch) for k, ch in flat[offset:]]
            assert [(k, ch) for k, text in kinds(rest) for ch in text] == expected
            assert rest[-1].id == len(flat)


async def test_resume_from_the_log_mid_reasoning(fake_openai: FakeOpenAI) -> None:
    thoughts = [f"t{i} " for i in range(40)]
    trigger = fake_openai.script(
        f"slow-{uuid.uuid4().hex}", Script(reasoning=thoughts, tokens=ANSWER, interval=0.02)
    )
    with override_settings(CHATSTREAM=upstream(fake_openai)):
        client = AsyncClient()
        started = await send(client, await new_conversation(client), trigger)
        response = await client.get(started["stream_url"])
        stream = aiter(response)
        first = b""
        while first.count(b"event: reasoning") < 3:
            first += await anext(stream)
        await stream.aclose()  # the network blips mid-reasoning
        seen = [e for e in _parse(first) if e.event == "reasoning"]
        _, rest = await stream_text(
            client, started["stream_url"], headers={"Last-Event-ID": str(seen[-1].id)}
        )
        await registry.wait(started["assistant_message"]["id"], timeout=20)
    assert kinds(seen + rest) == [("reasoning", "".join(thoughts)), ("delta", "".join(ANSWER))]


async def test_stop_mid_reasoning_closes_the_upstream_and_keeps_the_thoughts(
    fake_openai: FakeOpenAI,
) -> None:
    thoughts = [f"t{i} " for i in range(200)]
    trigger = fake_openai.script(
        f"stop-{uuid.uuid4().hex}", Script(reasoning=thoughts, tokens=ANSWER, interval=0.02)
    )
    with override_settings(CHATSTREAM=upstream(fake_openai)):
        client = AsyncClient()
        started = await send(client, await new_conversation(client), trigger)
        reply_id = started["assistant_message"]["id"]
        response = await client.get(started["stream_url"])
        stream = aiter(response)
        first = b""
        while first.count(b"event: reasoning") < 3:
            first += await anext(stream)
        assert (await post(client, f"/api/messages/{reply_id}/stop/")).status_code == 202
        first += b"".join([part async for part in stream])
        await registry.wait(reply_id, timeout=20)
    upstream_request = fake_openai.wait_request(trigger)
    assert upstream_request.ended_event.wait(10) and upstream_request.closed_early
    events = list(_parse(first))
    assert events[-1].data["status"] == "stopped"
    row = await Message.objects.aget(pk=reply_id)
    assert row.status == Status.STOPPED and row.content == ""
    assert row.reasoning == kinds(events)[0][1] and 0 < len(row.reasoning) < len("".join(thoughts))


async def test_websocket_frames_carry_reasoning_with_the_same_offsets(
    fake_openai: FakeOpenAI,
) -> None:
    trigger = fake_openai.script(
        f"ws-{uuid.uuid4().hex}", Script(reasoning=THOUGHTS, tokens=ANSWER, interval=0.01)
    )
    with override_settings(CHATSTREAM=upstream(fake_openai)):
        client = AsyncClient()
        conversation = await new_conversation(client)
        async with websocket(client, conversation) as communicator:
            await communicator.send_json_to({"type": "send", "content": trigger})
            frames = await until_done(communicator)
            started = frames[0]
            await registry.wait(started["assistant_message"]["id"], timeout=20)
            thought = "".join(f["text"] for f in frames if f["type"] == "reasoning")
            answer = "".join(f["text"] for f in frames if f["type"] == "delta")
            assert (thought, answer) == ("".join(THOUGHTS), "".join(ANSWER))
            texts = [f for f in frames if f["type"] in ("reasoning", "delta")]
            assert texts[-1]["offset"] == len(thought + answer)
            assert frames[-1]["message"]["reasoning"] == thought
            # Resume mid-reasoning over the same socket: exactly the rest of both.
            await communicator.send_json_to(
                {"type": "resume", "message_id": started["assistant_message"]["id"], "offset": 4}
            )
            rest = await until_done(communicator)
    joined = "".join(f["text"] for f in rest if f["type"] in ("reasoning", "delta"))
    assert joined == (thought + answer)[4:]


def _parse(body: bytes) -> list[Event]:
    return list(parse_events(iter(body.decode().split("\n"))))
