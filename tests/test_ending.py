"""Every reply ends: whatever fails, readers get ``done`` and the row follows."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import OperationalError
from django.test import AsyncClient, override_settings
from django.utils import timezone

from bench.recovery import HOLD_THEIR_LOGS, MAKE_ORPHANS
from chatstream.generation import registry
from chatstream.models import Conversation, Message, Role, Status
from chatstream.providers.demo import demo_reply
from chatstream.replylog import get_reply_log
from chatstream.serializers import message_payload
from chatstream.signals import reply_finished
from tests.conftest import ROOT, RedisServer, new_postgres_database
from tests.fake_openai import FakeOpenAI, Script
from tests.settings import CHATSTREAM as TEST_CHATSTREAM
from tests.statements import on_statements
from tests.test_generation import upstream
from tests.test_views import SLOW_DEMO, error_of, new_conversation, post, send, stream_text

pytestmark = pytest.mark.django_db(transaction=True)


class Refusal:
    """The database refuses every final write of a reply (as SQLite locked, PostgreSQL gone)."""

    def __init__(self) -> None:
        self.on = threading.Event()
        self.refused = 0

    def __enter__(self) -> Refusal:
        self.on.set()
        return self

    def __exit__(self, *exc: object) -> None:
        self.on.clear()


@pytest.fixture
def refuse_final_writes(monkeypatch: pytest.MonkeyPatch) -> Refusal:
    refusal = Refusal()

    def refusing(sql: str) -> None:
        final = sql.lstrip().upper().startswith('UPDATE "CHATSTREAM_MESSAGE"')
        if refusal.on.is_set() and final and '"finished_at"' in sql:
            refusal.refused += 1
            raise OperationalError("database is locked")

    on_statements(monkeypatch, refusing)
    return refusal


@pytest.fixture
def finished_replies() -> Iterator[list[tuple[str, str]]]:
    received: list[tuple[str, str]] = []

    def receiver(sender: Any, message: Message, **kwargs: Any) -> None:
        received.append((str(message.id), message.status))

    reply_finished.connect(receiver)
    yield received
    reply_finished.disconnect(receiver)


async def wait_for(predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_readers_get_done_while_the_database_refuses_and_the_row_follows(
    refuse_final_writes: Refusal, finished_replies: list[tuple[str, str]]
) -> None:
    client = AsyncClient()
    conversation = await new_conversation(client)
    with refuse_final_writes:
        started = await send(client, conversation, "hello")
        reply_id = started["assistant_message"]["id"]
        text, events = await stream_text(client, started["stream_url"])
        assert text == demo_reply("hello")
        assert (events[-1].event, events[-1].data["status"]) == ("done", "complete")
        assert events[-1].data["message"]["content"] == text
        row = await Message.objects.aget(pk=reply_id)
        assert row.status == Status.STREAMING and refuse_final_writes.refused >= 1
    # The database is back: the generation's retry writes the row, once.
    await registry.wait(reply_id, timeout=20)
    row = await Message.objects.aget(pk=reply_id)
    assert (row.status, row.content) == (Status.COMPLETE, text)
    assert finished_replies == [(reply_id, "complete")]


async def test_the_finalised_reply_is_the_row_as_written_without_reading_it_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    statements: list[str] = []

    received: list[tuple[dict[str, Any], str]] = []

    async def receiver(sender: Any, message: Message, **kwargs: Any) -> None:
        # An async receiver: its conversation must be there without a query.
        received.append((message_payload(message), message.conversation.title))

    client = AsyncClient()
    conversation = await new_conversation(client)
    reply_finished.connect(receiver)
    on_statements(monkeypatch, statements.append)
    try:
        started = await send(client, conversation, "hello there")
        reply_id = started["assistant_message"]["id"]
        await registry.wait(reply_id, timeout=20)
    finally:
        monkeypatch.undo()
        reply_finished.disconnect(receiver)

    final = next(
        i
        for i, sql in enumerate(statements)
        if sql.startswith('UPDATE "chatstream_message"') and '"finished_at"' in sql
    )
    assert not [sql for sql in statements[final + 1 :] if "chatstream_message" in sql]
    row = await Message.objects.select_related("conversation").aget(pk=reply_id)
    assert received == [(message_payload(row), "hello there")]


async def test_a_row_given_up_on_is_finalised_from_the_log_by_the_next_message(
    refuse_final_writes: Refusal, finished_replies: list[tuple[str, str]]
) -> None:
    client = AsyncClient()
    conversation = await new_conversation(client)
    with override_settings(CHATSTREAM={**TEST_CHATSTREAM, "FINALISE_RETRY": 0}):
        with refuse_final_writes:
            started = await send(client, conversation, "hello")
            reply_id = started["assistant_message"]["id"]
            await registry.wait(reply_id, timeout=20)
        row = await Message.objects.aget(pk=reply_id)
        assert row.status == Status.STREAMING  # given up on: the log has the ending
        again = await post(client, f"/api/conversations/{conversation}/messages/", {"content": "x"})
        assert again.status_code == 201, again.content
        await registry.wait(again.json()["assistant_message"]["id"], timeout=20)
    row = await Message.objects.aget(pk=reply_id)
    # Finalised as its generation ended it, not as interrupted.
    assert (row.status, row.content) == (Status.COMPLETE, demo_reply("hello"))
    assert finished_replies[0] == (reply_id, "complete")


async def test_a_message_read_after_done_is_final_even_while_the_row_is_retried(
    refuse_final_writes: Refusal,
) -> None:
    client = AsyncClient()
    conversation = await new_conversation(client)
    with override_settings(CHATSTREAM={**TEST_CHATSTREAM, "FINALISE_RETRY": 0}):
        with refuse_final_writes:
            started = await send(client, conversation, "hello")
            reply_id = started["assistant_message"]["id"]
            await registry.wait(reply_id, timeout=20)
        response = await client.get(f"/api/messages/{reply_id}/")
    assert response.json()["status"] == "complete"
    assert response.json()["content"] == demo_reply("hello")


async def test_model_output_no_database_can_store_is_replaced_the_same_everywhere(
    fake_openai: FakeOpenAI,
) -> None:
    tokens = ["a\x00b", " \x00", "é\x00"]
    trigger = fake_openai.script(f"nul-{uuid.uuid4().hex}", Script(tokens=tokens))
    with override_settings(CHATSTREAM=upstream(fake_openai)):
        client = AsyncClient()
        started = await send(client, await new_conversation(client), trigger)
        text, events = await stream_text(client, started["stream_url"])
        await registry.wait(started["assistant_message"]["id"], timeout=20)
    expected = "a\ufffdb \ufffdé\ufffd"
    assert text == expected
    assert events[-1].id == len(expected)
    row = await Message.objects.aget(pk=started["assistant_message"]["id"])
    assert (row.status, row.content) == (Status.COMPLETE, expected)


async def test_deleting_the_owner_mid_reply_stops_it_and_ends_its_log() -> None:
    user = await sync_to_async(User.objects.create_user)("owner-of-a-reply")
    client = AsyncClient()
    await client.aforce_login(user)
    with override_settings(CHATSTREAM=SLOW_DEMO):
        started = await send(client, await new_conversation(client))
        reply_id = started["assistant_message"]["id"]
        log = get_reply_log()
        await wait_for(lambda: _has_text(log, reply_id))
        await sync_to_async(user.delete)()
        await registry.wait(reply_id, timeout=10)
        read = await log.read(reply_id, 0, 0)
    assert read is not None and read.final["status"] == "stopped"
    assert 0 < len(read.text) < len(demo_reply("hello"))
    assert not await log.is_alive(reply_id)
    assert not await Message.objects.filter(pk=reply_id).aexists()


async def _has_text(log: Any, reply_id: str) -> bool:
    return bool(await log.length(reply_id))


async def test_api_delete_mid_reply_gives_its_reader_done() -> None:
    with override_settings(CHATSTREAM=SLOW_DEMO):
        client = AsyncClient()
        conversation = await new_conversation(client)
        started = await send(client, conversation)
        response = await client.get(started["stream_url"])
        stream = aiter(response)
        await anext(stream)  # the retry line
        assert (await client.delete(f"/api/conversations/{conversation}/")).status_code == 204
        body = b"".join([part async for part in stream]).decode()
        await registry.wait(started["assistant_message"]["id"], timeout=10)
    assert "event: done" in body and '"status":"stopped"' in body


async def test_orphans_do_not_count_against_the_concurrency_limit() -> None:
    client = AsyncClient()
    conversation = await new_conversation(client)
    orphaned = await Conversation.objects.aget(pk=conversation)
    old = timezone.now() - timedelta(minutes=5)
    orphan = await Message.objects.acreate(
        conversation=orphaned,
        role=Role.ASSISTANT,
        status=Status.STREAMING,
        content="half",
        created_at=old,
    )
    with override_settings(CHATSTREAM={**TEST_CHATSTREAM, "MAX_CONCURRENT_REPLIES": 1}):
        other = await new_conversation(client)
        response = await post(client, f"/api/conversations/{other}/messages/", {"content": "hi"})
        assert response.status_code == 201, response.content
        await registry.wait(response.json()["assistant_message"]["id"], timeout=10)
        # A live reply still counts.
        with override_settings(CHATSTREAM={**SLOW_DEMO, "MAX_CONCURRENT_REPLIES": 1}):
            live = await send(client, await new_conversation(client))
            busy = await post(client, f"/api/conversations/{other}/messages/", {"content": "hi"})
            assert (busy.status_code, error_of(busy)) == (429, "too_many_replies")
            await post(client, f"/api/messages/{live['assistant_message']['id']}/stop/")
            await registry.wait(live["assistant_message"]["id"], timeout=10)
    await orphan.arefresh_from_db()
    assert (orphan.status, orphan.content) == (Status.INTERRUPTED, "half")


# --- recovery at scale, by the management command in a process of its own -----------


ORPHANS = 500


def _make_orphans(env: dict[str, str]) -> None:
    _manage(env, "shell", "-v0", "-c", MAKE_ORPHANS.format(n=ORPHANS))


def _manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _kill_a_worker_holding_them(env: dict[str, str]) -> None:
    """A process that owns every orphan's log, killed as ``kill -9`` would."""
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "shell", "-v0", "-c", HOLD_THEIR_LOGS],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "holding"
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        worker.stdout.close()
    time.sleep(float(env["TEST_LEASE_TTL"]) + 0.5)  # its leases lapse


@pytest.fixture(params=["memory", "redis"])
def orphan_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "REDIS"))},
        "DJANGO_SETTINGS_MODULE": "tests.live_settings",
        "DJANGO_SECRET_KEY": "recovery-tests-secret-key",
    }
    with new_postgres_database(f"chatstream_orphans_{os.getpid()}") as url:
        env["DATABASE_URL"] = url or f"sqlite:///{tmp_path / 'db.sqlite3'}"
        if request.param == "memory":
            yield env
            return
        redis_server = RedisServer(tmp_path).start()
        try:
            yield {**env, "REDIS_URL": redis_server.url, "TEST_LEASE_TTL": "1"}
        finally:
            redis_server.stop()


@pytest.mark.django_db(transaction=False)
def test_recover_command_finalises_500_orphans_concurrently(orphan_env: dict[str, str]) -> None:
    _manage(orphan_env, "migrate", "-v0")
    _make_orphans(orphan_env)
    text = "checkpointed"
    if "REDIS_URL" in orphan_env:
        _kill_a_worker_holding_them(orphan_env)
        text = "checkpointed and more"  # the log knew more than the last checkpoint
    started = time.monotonic()
    out = _manage(orphan_env, "chatstream_recover")
    took = time.monotonic() - started
    print(f"recovered {ORPHANS} orphans in {took:.2f} s")  # the benchmark measures; see bench/
    assert out.strip() == f"Recovered {ORPHANS} of {ORPHANS} streaming replies."
    assert took < 60  # generous: the figure that matters is bench/recovery.py's
    counts = _manage(
        orphan_env,
        "shell",
        "-v0",
        "-c",
        "from chatstream.models import Message; "
        f"print(Message.objects.filter(status='interrupted', content={text!r}).count(), "
        "Message.objects.filter(status='streaming').count())",
    )
    assert counts.split() == [str(ORPHANS), "0"]


async def test_under_the_cancel_policy_a_reply_log_blip_is_no_reason_to_stop(
    fake_openai: FakeOpenAI, own_redis: RedisServer
) -> None:
    tokens = [f"b{i} " for i in range(60)]
    trigger = fake_openai.script(f"blip-{uuid.uuid4().hex}", Script(tokens=tokens, interval=0.05))
    policy = upstream(
        fake_openai,
        DISCONNECT_POLICY="cancel",
        DISCONNECT_GRACE=0.3,
        REPLY_LOG={
            "BACKEND": "chatstream.replylog.redis.RedisReplyLog",
            "LOCATION": own_redis.url,
        },
    )
    with override_settings(CHATSTREAM=policy):
        client = AsyncClient()
        started = await send(client, await new_conversation(client), trigger)
        response = await client.get(started["stream_url"])
        stream = aiter(response)
        body = [await anext(stream), await anext(stream)]  # the retry line, a delta
        # Redis goes away for longer than the grace, and comes back with its data.
        admin = redis.Redis.from_url(own_redis.url)
        await sync_to_async(admin.shutdown)(save=True)
        admin.close()
        own_redis.process.wait(timeout=10)
        await asyncio.sleep(1.0)
        await sync_to_async(own_redis.start)()
        body += [part async for part in stream]
        await registry.wait(started["assistant_message"]["id"], timeout=30)
        await get_reply_log().aclose()
    reply = await Message.objects.aget(pk=started["assistant_message"]["id"])
    assert (reply.status, reply.content) == (Status.COMPLETE, "".join(tokens))
    assert b"event: done" in b"".join(body)
