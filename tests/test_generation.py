"""The generation's database discipline and its endings, in-process against the fake upstream."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import re
import threading
import uuid
from typing import Any

import pytest
from django.db import OperationalError, connection
from django.db.backends.signals import connection_created
from django.test import AsyncClient, override_settings
from django.utils import timezone

from chatstream import dbpool, generation
from chatstream.generation import registry
from chatstream.models import Message
from chatstream.replylog import get_reply_log
from tests.fake_openai import FakeOpenAI, Script
from tests.settings import CHATSTREAM as TEST_CHATSTREAM
from tests.statements import on_statements
from tests.test_views import finish, new_conversation, send

pytestmark = pytest.mark.django_db(transaction=True)

_WRITE = re.compile(
    r'^\s*(INSERT INTO|UPDATE|DELETE FROM)\s+"?chatstream_(message|conversation)"?', re.I
)


class WriteCounter:
    """Counts writes to the message and conversation tables from every thread's connection."""

    def __init__(self) -> None:
        self.writes: list[str] = []


@pytest.fixture
def count_writes(monkeypatch: pytest.MonkeyPatch) -> WriteCounter:
    # Every statement of every connection passes here, whichever thread opened it.
    counter = WriteCounter()

    def counting(sql: str) -> None:
        if _WRITE.match(sql):
            counter.writes.append(sql.split()[0].upper())

    on_statements(monkeypatch, counting)
    return counter


def upstream(fake: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    connection = {
        "BACKEND": "chatstream.providers.openai.OpenAIProvider",
        "OPTIONS": {"api_key": "sk-test", "base_url": fake.base_url, "max_retries": 0},
        "MODEL": "fake-model",
    }
    return {**TEST_CHATSTREAM, "CONNECTIONS": {"default": connection}, **extra}


async def run_reply(
    fake: FakeOpenAI, tokens: int, counter: WriteCounter, **script: Any
) -> tuple[int, Message]:
    trigger = fake.script(f"g-{uuid.uuid4().hex}", Script(tokens=["tok "] * tokens, **script))
    client = AsyncClient()
    conversation = await new_conversation(client)
    before = len(counter.writes)
    started = await send(client, conversation, trigger)
    await registry.wait(started["assistant_message"]["id"], timeout=30)
    reply = await Message.objects.aget(pk=started["assistant_message"]["id"])
    assert reply.status == "complete" and reply.content == "tok " * tokens
    return len(counter.writes) - before, reply


async def test_database_writes_do_not_grow_with_tokens(
    fake_openai: FakeOpenAI, count_writes: WriteCounter
) -> None:
    with override_settings(CHATSTREAM=upstream(fake_openai, CHECKPOINT_INTERVAL=60)):
        short, _ = await run_reply(fake_openai, 20, count_writes)
        long, _ = await run_reply(fake_openai, 200, count_writes)
    # One INSERT for the question and the reply, one UPDATE of the conversation
    # (title, updated_at), one UPDATE to finalise the reply.
    assert short == long == 3


async def test_checkpoints_are_bounded_by_the_interval_not_the_tokens(
    fake_openai: FakeOpenAI, count_writes: WriteCounter
) -> None:
    with override_settings(CHATSTREAM=upstream(fake_openai, CHECKPOINT_INTERVAL=0.2)):
        writes, reply = await run_reply(fake_openai, 200, count_writes, interval=0.005)
    # At most one checkpoint per interval of streaming, never one per token.
    assert 3 <= writes <= 3 + math.ceil(reply.duration_ms / 200) + 1 < 200


async def test_streaming_replies_share_a_few_database_threads(
    fake_openai: FakeOpenAI, count_writes: WriteCounter
) -> None:
    """Checkpoints must not pin a thread (and a DB connection) per streaming reply."""
    count, tokens = 12, 60
    trigger = fake_openai.script(
        f"g-{uuid.uuid4().hex}", Script(tokens=["tok "] * tokens, interval=0.03)
    )
    client = AsyncClient()
    with override_settings(CHATSTREAM=upstream(fake_openai, CHECKPOINT_INTERVAL=0.05)):
        conversations = [await new_conversation(client) for _ in range(count)]
        before = threading.active_count()
        started = [await send(client, c, trigger) for c in conversations]
        reply_ids = [s["assistant_message"]["id"] for s in started]
        await asyncio.sleep(1.0)  # every reply streaming, several checkpoints each
        during = threading.active_count()
        for reply_id in reply_ids:
            await registry.wait(reply_id, timeout=30)
    grown = during - before
    assert grown <= dbpool.POOL_SIZE + 2, f"{grown} more threads for {count} streaming replies"
    updates = count_writes.writes.count("UPDATE")
    assert updates > 3 * count  # checkpoints happened, besides the finalising UPDATEs
    async for reply in Message.objects.filter(pk__in=reply_ids):
        assert reply.status == "complete" and reply.content == "tok " * tokens


@pytest.mark.skipif(
    connection.vendor != "sqlite", reason="PostgreSQL's connections go back to Django's pool"
)
async def test_replies_open_no_sqlite_connection_of_their_own(fake_openai: FakeOpenAI) -> None:
    """A reply's lookups, new rows and ending run on the pool's threads, whose SQLite
    connections stay open: opening one per request (WAL set-up, a checkpoint on close)
    was much of a reply's set-up CPU."""
    count = 3 * dbpool.POOL_SIZE
    trigger = fake_openai.script(f"c-{uuid.uuid4().hex}", Script(tokens=["a ", "b"]))
    client = AsyncClient()
    opened: list[int] = []

    def created(**kwargs: Any) -> None:
        opened.append(threading.get_ident())

    with override_settings(CHATSTREAM=upstream(fake_openai)):
        conversations = [await new_conversation(client) for _ in range(count)]
        await finish(await send(client, conversations[0], trigger))  # the pool connects
        connection_created.connect(created)
        try:
            started = [await send(client, c, trigger) for c in conversations[1:]]
            for reply in started:
                await finish(reply)
        finally:
            connection_created.disconnect(created)
    ids = [s["assistant_message"]["id"] for s in started]
    assert [m.content async for m in Message.objects.filter(pk__in=ids)] == ["a b"] * len(ids)
    assert len(opened) <= dbpool.POOL_SIZE, f"{len(opened)} connections for {len(ids)} replies"


async def test_a_failed_checkpoint_does_not_end_the_reply(
    fake_openai: FakeOpenAI, count_writes: WriteCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def locked(reply_id: str, text: str) -> None:
        raise OperationalError("database is locked")

    monkeypatch.setattr(generation, "_checkpoint_row", locked)
    with override_settings(CHATSTREAM=upstream(fake_openai, CHECKPOINT_INTERVAL=0.05)):
        writes, reply = await run_reply(fake_openai, 30, count_writes, interval=0.01)
    assert writes == 3  # no checkpoint got through; the finalising UPDATE has it all


async def _slow_reply(fake: FakeOpenAI) -> tuple[str, str]:
    """A reply that streams for a while: its id and the upstream request's prompt."""
    prompt = fake.script(f"g-{uuid.uuid4().hex}", Script(tokens=["tok "] * 400, interval=0.02))
    client = AsyncClient()
    started = await send(client, await new_conversation(client), prompt)
    reply_id = started["assistant_message"]["id"]
    await asyncio.to_thread(fake.wait_request, prompt)
    await asyncio.sleep(0.2)  # some text streamed
    return reply_id, prompt


async def test_a_stop_ends_the_reply_stopped_and_closes_the_upstream(
    fake_openai: FakeOpenAI,
) -> None:
    with override_settings(CHATSTREAM=upstream(fake_openai)):
        reply_id, prompt = await _slow_reply(fake_openai)
        await get_reply_log().request_stop(reply_id)
        await registry.wait(reply_id, timeout=30)
    reply = await Message.objects.aget(pk=reply_id)
    assert reply.status == "stopped" and reply.content.startswith("tok ")
    request = fake_openai.wait_request(prompt)
    assert await asyncio.to_thread(request.ended_event.wait, 10)
    assert request.closed_early and not request.completed


_LONG = 400_000  # characters in each of the history's two earlier turns


def _long_strings_held(skip: set[int]) -> list[str]:
    """What holds a string or bytes as long as a history turn, but the objects in ``skip``.

    Dicts of strings alone are not tracked by the collector: they are looked into
    through the lists, tuples and objects that hold them.
    """
    found = []
    for holder in gc.get_objects():
        values: list[Any] = []
        if isinstance(holder, dict):
            values = list(holder.values())
        elif isinstance(holder, list | tuple):
            values = list(holder)
        elif not isinstance(holder, type):
            with contextlib.suppress(Exception):  # no __dict__, or one that refuses
                values = list(vars(holder).values())
        for value in values:
            inner = list(value.values()) if isinstance(value, dict) else [value]
            owner = value if isinstance(value, dict) else holder
            if id(owner) in skip or id(holder) in skip:
                continue
            if any(isinstance(v, str | bytes) and len(v) >= _LONG for v in inner):
                found.append(type(owner).__name__)
    return found


def _fake_copies(fake: FakeOpenAI) -> set[int]:
    """The fake upstream's own records of what it was sent, in this test and earlier ones."""
    ids = set()
    for request in fake.requests:
        items = request.body.get("messages") or request.body.get("input")
        ids |= {id(request), id(request.body), *map(id, items if isinstance(items, list) else [])}
    return ids


@pytest.mark.parametrize(
    "backend",
    [
        "chatstream.providers.openai.OpenAIProvider",
        "chatstream.providers.openai.OpenAIResponsesProvider",
    ],
)
async def test_a_streaming_reply_lets_its_history_go_once_sent(
    fake_openai: FakeOpenAI, backend: str
) -> None:
    """A long conversation's history is not kept (as dicts, or as the request's JSON)
    for the minutes the model may take."""
    settings = upstream(fake_openai)
    settings["CONNECTIONS"]["default"] |= {"BACKEND": backend, "CONTEXT_TOKENS": 10 * _LONG}
    prompt = fake_openai.script(
        f"g-{uuid.uuid4().hex}", Script(tokens=["tok "] * 400, interval=0.02)
    )
    client = AsyncClient()
    with override_settings(CHATSTREAM=settings):
        conversation = await new_conversation(client)
        question = await Message.objects.acreate(
            conversation_id=conversation,
            role="user",
            content="q" * _LONG,
            created_at=timezone.now(),
        )
        await Message.objects.acreate(
            conversation_id=conversation,
            role="assistant",
            content="a" * _LONG,
            reply_to=question,
            created_at=timezone.now(),
        )
        del question
        started = await send(client, conversation, prompt)
        sent = await asyncio.to_thread(fake_openai.wait_request, prompt)
        await asyncio.sleep(0.2)  # some text streamed
        sent_text = json.dumps(sent.body)
        assert sent_text.count("q" * _LONG) == sent_text.count("a" * _LONG) == 1
        gc.collect()
        held = _long_strings_held(_fake_copies(fake_openai))
        reply_id = started["assistant_message"]["id"]
        assert await get_reply_log().is_alive(reply_id), "the reply ended before the check"
        await get_reply_log().request_stop(reply_id)
        await registry.wait(reply_id, timeout=30)
    assert held == []


async def test_a_stop_that_comes_with_a_shutdown_does_not_hide_it(
    fake_openai: FakeOpenAI,
) -> None:
    """The reply's task is cancelled both ways at once: the shutdown's cancellation wins."""
    with override_settings(CHATSTREAM=upstream(fake_openai)):
        reply_id, _ = await _slow_reply(fake_openai)
        task = registry._tasks[reply_id]
        await get_reply_log().request_stop(reply_id)
        for _ in range(1000):  # until the stop has asked to cancel the reply's task
            if task.cancelling():
                break
            await asyncio.sleep(0)
        assert task.cancelling() == 1
        task.cancel()  # what a shutdown does once its grace is over, before the task runs
        await registry.wait(reply_id, timeout=30)
    reply = await Message.objects.aget(pk=reply_id)
    assert reply.status == "interrupted"
