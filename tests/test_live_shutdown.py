"""Endings that kill the process: SIGTERM finalises in-flight replies; kill -9 is recovered."""

from __future__ import annotations

import signal
import sqlite3
import uuid
from collections.abc import Callable

from tests.conftest import LiveServer
from tests.fake_openai import FakeOpenAI, Script
from tests.test_live_sse import message, read_deltas, text_of


def row(server: LiveServer, reply_id: str) -> tuple[str, str]:
    with sqlite3.connect(server.workdir / "db.sqlite3") as db:
        return db.execute(
            "SELECT status, content FROM chatstream_message WHERE id = ?",
            (uuid.UUID(reply_id).hex,),
        ).fetchone()


def test_sigterm_finalises_in_flight_replies_as_interrupted(
    fresh_server: Callable[..., LiveServer], fake_openai: FakeOpenAI
) -> None:
    server = fresh_server()
    tokens = [f"s{i} " for i in range(500)]
    trigger = fake_openai.script(f"term-{uuid.uuid4().hex}", Script(tokens=tokens, interval=0.05))
    with server.client() as client:
        started = client.start(trigger)
        reply_id = started["assistant_message"]["id"]
        seen = read_deltas(client, started["stream_url"], 3)
        assert server.signal(signal.SIGTERM) == 0
    status, content = row(server, reply_id)
    assert status == "interrupted"
    assert content.startswith(text_of(seen))
    assert 0 < len(content) < len("".join(tokens))
    assert server.finished_events() == [{"id": reply_id, "status": "interrupted"}]
    upstream = fake_openai.wait_request(trigger)
    assert upstream.ended_event.wait(10) and upstream.closed_early


def test_reply_of_a_killed_process_is_recovered_as_interrupted(
    fresh_server: Callable[..., LiveServer], fake_openai: FakeOpenAI
) -> None:
    server = fresh_server(TEST_CHECKPOINT_INTERVAL="0.1")
    tokens = [f"k{i} " for i in range(500)]
    trigger = fake_openai.script(f"kill-{uuid.uuid4().hex}", Script(tokens=tokens, interval=0.02))
    with server.client() as client:
        started = client.start(trigger)
        reply_id = started["assistant_message"]["id"]
        conversation = started["user_message"]["conversation"]
        read_deltas(client, started["stream_url"], 20)
        server.signal(signal.SIGKILL)
        status, checkpointed = row(server, reply_id)
        assert status == "streaming" and checkpointed

        server.start()  # the same database, a new process: the reply's owner is gone
        events = client.read_all(started["stream_url"])
        stored = message(client, reply_id)
        again = client.call(
            "POST", f"/api/conversations/{conversation}/messages/", {"content": "next"}
        )
    assert [e.event for e in events] == ["delta", "done"]
    assert events[-1].data["status"] == "interrupted"
    assert text_of(events) == checkpointed
    assert stored["status"] == "interrupted" and stored["content"] == checkpointed
    assert again.status_code == 201
    assert server.finished_events() == [{"id": reply_id, "status": "interrupted"}]


def test_recover_command_finalises_orphaned_replies(
    fresh_server: Callable[..., LiveServer], fake_openai: FakeOpenAI
) -> None:
    server = fresh_server()
    trigger = fake_openai.script(
        f"cmd-{uuid.uuid4().hex}", Script(tokens=["z "] * 500, interval=0.02)
    )
    with server.client() as client:
        started = client.start(trigger)
        read_deltas(client, started["stream_url"], 2)
    server.signal(signal.SIGKILL)
    reply_id = started["assistant_message"]["id"]
    assert row(server, reply_id)[0] == "streaming"
    assert "Recovered 1 of 1" in server.manage("chatstream_recover")
    assert row(server, reply_id)[0] == "interrupted"
