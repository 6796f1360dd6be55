"""A reply sends the history that fits its model, and says so when it still does not."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.test import AsyncClient, override_settings
from django.utils import timezone

from chatstream.context import history_budget, model_window
from chatstream.models import Conversation, Message, Role, Status
from tests.fake_openai import FakeOpenAI, Script
from tests.test_generation import upstream
from tests.test_views import finish, new_conversation, send, stream_text


@pytest.mark.parametrize(
    ("model", "window"),
    [
        ("gpt-5", 200_000),
        ("gpt-5-mini", 200_000),
        ("o3-mini", 200_000),
        ("o1", 200_000),
        ("gpt-4o-mini", 128_000),
        ("gpt-4.1-nano", 1_000_000),
        ("openai/gpt-4o", 128_000),
        ("deepseek-reasoner", 64_000),
        ("llama3.2", 8_192),
        ("my-deployment", 8_192),
        ("omni-local", 8_192),
    ],
)
def test_the_window_comes_from_the_model_name(model: str, window: int) -> None:
    assert model_window(model) == window


def test_the_budget_is_what_someone_set_else_safe_for_the_model() -> None:
    assert history_budget("gpt-4o", assistant=900, connection=5000, max_output=None) == 900
    assert history_budget("gpt-4o", assistant=None, connection=5000, max_output=None) == 5000
    assert history_budget("gpt-4o", assistant=None, connection=None, max_output=None) == 32_000
    assert history_budget("llama3.2", assistant=None, connection=None, max_output=None) == 4_096
    assert history_budget("llama3.2", assistant=None, connection=None, max_output=6000) == 2_192


pytestmark = pytest.mark.django_db(transaction=True)


async def _long_conversation(client: AsyncClient, turns: int, words: int) -> str:
    """A conversation with ``turns`` stored question-and-answer pairs of ``words`` each."""
    conversation = await new_conversation(client)
    row = await Conversation.objects.aget(pk=conversation)
    text, start = "word " * words, timezone.now() - timedelta(hours=1)
    for turn in range(turns):
        at = start + timedelta(seconds=2 * turn)
        question = await Message.objects.acreate(
            conversation=row, role=Role.USER, content=text, status=Status.COMPLETE, created_at=at
        )
        await Message.objects.acreate(
            conversation=row,
            role=Role.ASSISTANT,
            content=text,
            status=Status.COMPLETE,
            reply_to=question,
            created_at=at + timedelta(seconds=1),
        )
    return conversation


async def test_a_long_history_is_trimmed_to_a_safe_budget_by_default(
    fake_openai: FakeOpenAI,
) -> None:
    last = fake_openai.script(f"long-{uuid.uuid4().hex}", Script(tokens=["ok"]))
    with override_settings(CHATSTREAM=upstream(fake_openai)):  # model "fake-model": unknown
        client = AsyncClient()
        conversation = await _long_conversation(client, turns=40, words=500)  # ~25k tokens
        await finish(await send(client, conversation, last))
    sent = fake_openai.wait_request(last).body["messages"]
    assert sent[-1] == {"role": "user", "content": last}
    assert 2 < len(sent) < 40
    assert sum(len(m["content"]) for m in sent) <= 4 * 4_096


async def test_a_connection_sets_its_own_budget(fake_openai: FakeOpenAI) -> None:
    last = fake_openai.script(f"roomy-{uuid.uuid4().hex}", Script(tokens=["ok"]))
    chatstream = upstream(fake_openai)
    chatstream["CONNECTIONS"]["default"]["CONTEXT_TOKENS"] = 100_000
    with override_settings(CHATSTREAM=chatstream):
        client = AsyncClient()
        conversation = await _long_conversation(client, turns=40, words=500)
        await finish(await send(client, conversation, last))
    assert len(fake_openai.wait_request(last).body["messages"]) == 81


async def test_a_conversation_the_model_cannot_hold_ends_with_context_too_long(
    fake_openai: FakeOpenAI,
) -> None:
    trigger = fake_openai.script(
        f"small-{uuid.uuid4().hex}", Script(tokens=["never"], context_window=50)
    )
    with override_settings(CHATSTREAM=upstream(fake_openai)):
        client = AsyncClient()
        conversation = await _long_conversation(client, turns=2, words=100)
        started = await send(client, conversation, trigger)
        _, events = await stream_text(client, started["stream_url"])
    error, done = events[-2:]
    assert error.event == "error" and error.data["code"] == "context_too_long"
    assert "start a new conversation" in error.data["message"]
    assert (done.event, done.data["status"]) == ("done", "error")
