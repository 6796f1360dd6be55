"""A real server whose database refuses a reply's final write for 30 s loses nothing."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from tests.fake_openai import FakeOpenAI, Script
from tests.test_live_sse import text_of, unique, wait_for

LOCKED_FOR = 30.0  # seconds: past the server's 20 s SQLite timeout, so one write fails


def test_a_database_refusing_the_final_write_for_30_s_loses_nothing(
    fresh_server: Any, fake_openai: FakeOpenAI
) -> None:
    server = fresh_server()
    tokens = [f"w{i} " for i in range(40)]
    trigger = fake_openai.script(unique("locked"), Script(tokens=tokens, interval=0.02))
    with server.client() as client:
        started = client.start(trigger)
        reply_id = started["assistant_message"]["id"]
        # As another process holding SQLite's write lock (or PostgreSQL gone) would.
        database = sqlite3.connect(server.workdir / "db.sqlite3", isolation_level=None)
        database.execute("BEGIN EXCLUSIVE")
        locked_at = time.monotonic()
        try:
            events = client.read_all(started["stream_url"])
            done_after = time.monotonic() - locked_at
            assert done_after < LOCKED_FOR  # readers do not wait for the database
            assert text_of(events) == "".join(tokens)
            assert (events[-1].event, events[-1].data["status"]) == ("done", "complete")
            assert events[-1].data["message"]["content"] == "".join(tokens)
            time.sleep(max(0.0, LOCKED_FOR - (time.monotonic() - locked_at)))
        finally:
            database.execute("ROLLBACK")
            database.close()
        print(f"done {done_after:.1f} s after the lock; database back after {LOCKED_FOR:.0f} s")

        def final() -> dict[str, Any] | None:
            row = client.call("GET", f"/api/messages/{reply_id}/").json()
            return row if row["status"] != "streaming" else None

        row = wait_for(final, timeout=60, what="the row to be finalised")
        assert (row["status"], row["content"]) == ("complete", "".join(tokens))
        again = client.call(
            "POST",
            f"/api/conversations/{started['user_message']['conversation']}/messages/",
            {"content": "and again"},
        )
        assert again.status_code == 201, again.text
        client.read_all(again.json()["stream_url"])
    finished = [e for e in server.finished_events() if e["id"] == reply_id]
    assert [e["status"] for e in finished] == ["complete"]


def test_a_worker_recovers_orphans_at_start_up_beside_its_first_request(
    fresh_server: Any, fake_openai: FakeOpenAI
) -> None:
    server = fresh_server()
    with server.client() as client:
        conversation = client.conversation()["id"]
    server.stop()
    # A reply its dead process left streaming, long ago.
    reply_id = server.manage(
        "shell",
        "-v0",
        "-c",
        "from datetime import timedelta; from django.utils import timezone; "
        "from chatstream.models import Message; "
        f"print(Message.objects.create(conversation_id={conversation!r}, role='assistant', "
        "status='streaming', content='half a reply', "
        "created_at=timezone.now() - timedelta(minutes=5)).pk)",
    ).strip()
    database = sqlite3.connect(server.workdir / "db.sqlite3", isolation_level=None)
    server.start()
    with server.client() as client:
        assert client.call("GET", "/api/assistants/").status_code == 200

    def status() -> tuple[str, str] | None:
        row = database.execute(
            "SELECT status, content FROM chatstream_message WHERE id = ?",
            (reply_id.replace("-", ""),),
        ).fetchone()
        return row if row[0] != "streaming" else None

    try:
        assert wait_for(status, timeout=30, what="the sweep") == ("interrupted", "half a reply")
    finally:
        database.close()
