"""Per-owner limits and the context budget: 429s that store nothing, quotas that stop replies."""

from __future__ import annotations

import uuid

import pytest
from django.core.cache import cache
from django.test import AsyncClient, override_settings

from chatstream.models import Assistant, Message
from tests.fake_openai import FakeOpenAI, Script
from tests.settings import CHATSTREAM as TEST_CHATSTREAM
from tests.test_generation import upstream
from tests.test_views import error_of, finish, new_conversation, post, send, stream_text

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def empty_cache() -> None:
    cache.clear()


async def test_daily_token_quota_refuses_new_messages_once_used_up() -> None:
    with override_settings(CHATSTREAM={**TEST_CHATSTREAM, "DAILY_TOKEN_QUOTA": 50}):
        client = AsyncClient()
        conversation = await new_conversation(client)
        await finish(await send(client, conversation))  # the demo reply is > 50 tokens
        refused = await post(
            client, f"/api/conversations/{conversation}/messages/", {"content": "more"}
        )
    assert refused.status_code == 429
    assert error_of(refused) == "quota_exceeded"
    assert 0 < int(refused["Retry-After"]) <= 24 * 3600
    assert await Message.objects.filter(conversation_id=conversation).acount() == 2


async def test_reply_that_exhausts_the_quota_is_stopped_with_a_reason() -> None:
    with override_settings(CHATSTREAM={**TEST_CHATSTREAM, "DAILY_TOKEN_QUOTA": 60}):
        client = AsyncClient()
        started = await send(client, await new_conversation(client), "hi")
        await finish(started)
        text, events = await stream_text(client, started["stream_url"])
    reply = await Message.objects.aget(pk=started["assistant_message"]["id"])
    assert reply.status == "stopped"
    assert reply.error_code == "quota_exceeded"
    assert 0 < len(reply.content) <= 60 * 4
    assert reply.content == text
    assert [e.event for e in events[-2:]] == ["error", "done"]
    assert events[-2].data["code"] == "quota_exceeded"


async def test_history_is_trimmed_oldest_first_to_the_context_budget(
    fake_openai: FakeOpenAI,
) -> None:
    assistant = await Assistant.objects.acreate(
        name="Short memory",
        slug="short",
        system_prompt="Be brief.",
        context_tokens=60,
        is_default=True,
    )
    with override_settings(CHATSTREAM=upstream(fake_openai)):
        client = AsyncClient()
        conversation = await new_conversation(client, assistant=assistant.slug)
        for i in range(6):
            await finish(await send(client, conversation, f"question {i} " + "word " * 20))
        last = fake_openai.script(f"last-{uuid.uuid4().hex}", Script(tokens=["ok"]))
        await finish(await send(client, conversation, last))
    sent = fake_openai.wait_request(last).body["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."}
    assert sent[-1] == {"role": "user", "content": last}
    # About 7 + 14 tokens for the system prompt and the question, 35 for the latest
    # reply: the next older turn would pass 60, so it and all before it stay out.
    assert [m["role"] for m in sent] == ["system", "assistant", "user"]
    assert sent[1]["content"].startswith("You said: question 5 ")
