"""A reply's cost: its usage at its model's price, stored once, limited per owner a day."""

from __future__ import annotations

import uuid
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client, override_settings

from chatstream.models import Conversation, Message, ModelPrice
from chatstream.pricing import Price, price_for
from tests.fake_openai import FakeOpenAI, Script
from tests.test_generation import upstream
from tests.test_views import error_of, finish, new_conversation, post, send, stream_text

PRICE = Price(
    currency="USD",
    input=Decimal("2.50"),
    cached_input=Decimal("1.25"),
    output=Decimal("10"),
    reasoning=Decimal("10"),
)


@pytest.mark.parametrize(
    ("usage", "cost"),
    [
        ({"prompt_tokens": 1000, "completion_tokens": 500}, Decimal("0.0075")),
        # 600 fresh + 400 cached input; 300 answer + 200 reasoning output
        (
            {
                "prompt_tokens": 1000,
                "cached_tokens": 400,
                "completion_tokens": 500,
                "reasoning_tokens": 200,
            },
            Decimal("0.007"),
        ),  # fmt: skip
        ({"prompt_tokens": None, "completion_tokens": None}, None),
    ],
)
def test_cost_is_usage_at_the_price(usage: dict, cost: Decimal | None) -> None:
    assert PRICE.cost(usage) == cost


def test_reasoning_billed_apart_costs_its_own_price() -> None:
    price = Price("EUR", Decimal(1), Decimal(1), Decimal(4), reasoning=Decimal(8))
    usage = {"prompt_tokens": 0, "completion_tokens": 1_000_000, "reasoning_tokens": 250_000}
    assert price.cost(usage) == Decimal(3 + 2)
    assert price.tokens_for(Decimal(2)) == 500_000


pytestmark = pytest.mark.django_db(transaction=True)


async def _priced(model: str = "fake-model") -> ModelPrice:
    return await ModelPrice.objects.acreate(
        model=model,
        currency="USD",
        input_per_million=Decimal("2.50"),
        cached_input_per_million=Decimal("1.25"),
        output_per_million=Decimal("10"),
    )


async def test_a_reply_stores_its_cost_once_it_ends(fake_openai: FakeOpenAI) -> None:
    await _priced()
    trigger = fake_openai.script(
        f"paid-{uuid.uuid4().hex}",
        Script(tokens=["a"] * 20, reasoning=["r"] * 5, cached_tokens=4),
    )
    with override_settings(CHATSTREAM=upstream(fake_openai)):
        client = AsyncClient()
        started = await send(client, await new_conversation(client), trigger)
        await finish(started)
        shown = (await client.get(f"/api/messages/{started['assistant_message']['id']}/")).json()
    row = await Message.objects.aget(pk=started["assistant_message"]["id"])
    usage = {
        "prompt_tokens": row.prompt_tokens,
        "cached_tokens": row.cached_tokens,
        "completion_tokens": row.completion_tokens,
        "reasoning_tokens": row.reasoning_tokens,
    }
    assert row.cached_tokens == 4 and row.reasoning_tokens
    assert (row.cost, row.cost_currency) == (PRICE.cost(usage), "USD")
    assert shown["cost"] == {"amount": str(row.cost), "currency": "USD"}


async def test_a_model_without_a_price_costs_nothing_known(fake_openai: FakeOpenAI) -> None:
    trigger = fake_openai.script(f"free-{uuid.uuid4().hex}", Script(tokens=["a"]))
    with override_settings(CHATSTREAM=upstream(fake_openai)):
        client = AsyncClient()
        started = await send(client, await new_conversation(client), trigger)
        await finish(started)
    row = await Message.objects.aget(pk=started["assistant_message"]["id"])
    assert (row.cost, row.cost_currency) == (None, "")


def test_prices_are_cached_and_a_saved_or_deleted_one_applies_at_once(
    django_assert_num_queries: Any,
) -> None:
    assert price_for("fake-model") is None
    row = async_to_sync(_priced)()
    with django_assert_num_queries(1):  # the save forgot the table: read once more
        assert price_for("fake-model") == PRICE
    with django_assert_num_queries(0):
        assert price_for("fake-model") == PRICE and price_for("other") is None
    row.output_per_million = Decimal("12")
    row.save()
    assert price_for("fake-model") == replace(PRICE, output=Decimal(12), reasoning=Decimal(12))
    row.delete()
    assert price_for("fake-model") is None


def test_prices_come_from_the_table_when_the_cache_fails(
    settings: Any, django_assert_num_queries: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async_to_sync(_priced)()
    settings.CACHES = {
        **settings.CACHES,
        "down": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"},
    }
    settings.CHATSTREAM = {**settings.CHATSTREAM, "CACHE_ALIAS": "down"}
    for _ in range(2):  # nothing can be kept: the table answers each time
        with django_assert_num_queries(1):
            assert price_for("fake-model") == PRICE
    assert "Prices read from the database, the cache failed" in caplog.text


async def test_the_daily_cost_limit_stops_a_reply_and_refuses_the_next(
    fake_openai: FakeOpenAI,
) -> None:
    await _priced()
    # 0.0005 USD: the 9-token prompt costs 0.0000225; at 10 USD a million output
    # tokens, about 48 tokens are left, so a reply of 400 is stopped on the way.
    trigger = fake_openai.script(f"dear-{uuid.uuid4().hex}", Script(tokens=["word "] * 400))
    settings = upstream(fake_openai, DAILY_COST_LIMIT=0.0005)
    with override_settings(CHATSTREAM=settings):
        client = AsyncClient()
        conversation = await new_conversation(client)
        started = await send(client, conversation, trigger)
        await finish(started)
        text, events = await stream_text(client, started["stream_url"])
        refused = await post(
            client, f"/api/conversations/{conversation}/messages/", {"content": trigger}
        )
    row = await Message.objects.aget(pk=started["assistant_message"]["id"])
    assert (row.status, row.error_code) == ("stopped", "cost_limit_exceeded")
    assert 0 < len(row.content) < len("word " * 400) and row.content == text
    assert [e.event for e in events[-2:]] == ["error", "done"]
    assert events[-2].data["code"] == "cost_limit_exceeded"
    assert (refused.status_code, error_of(refused)) == (429, "cost_limit_exceeded")
    assert 0 < int(refused["Retry-After"]) <= 24 * 3600


def test_usage_shows_cost_by_assistant_owner_and_day(admin_client: Client) -> None:
    conversation = Conversation.objects.create(title="t")
    for amount in ("0.25", "0.50"):
        Message.objects.create(
            conversation=conversation, role="assistant", status="complete", content="x",
            prompt_tokens=1, completion_tokens=1, cost=Decimal(amount), cost_currency="USD",
            created_at=conversation.created_at,
        )  # fmt: skip
    response = admin_client.get("/admin/chatstream/message/usage/")
    [total] = response.context["totals"]
    assert (total["cost"], total["currency"]) == (Decimal("0.75"), "USD")
    assert "0.7500 USD" in response.content.decode()
    Message.objects.create(
        conversation=conversation, role="assistant", status="complete", content="x",
        cost=Decimal("1"), cost_currency="EUR", created_at=conversation.created_at,
    )  # fmt: skip
    response = admin_client.get("/admin/chatstream/message/usage/")
    assert "mixed currencies" in response.content.decode()
