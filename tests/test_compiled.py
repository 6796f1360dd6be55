"""Queries compiled once: the same rows and instances as the ORM's own, on every run."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.sessions.backends.db import SessionStore as DjangoStore
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.db.models.sql.compiler import SQLCompiler
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chatstream import views
from chatstream.compiled import Compiled
from chatstream.models import Assistant, Conversation, Message, Role, Status
from chatstream.turns import _HISTORY, current_messages
from project.database_sessions import SessionStore
from tests.conftest import new_postgres_database

pytestmark = pytest.mark.django_db(transaction=True)

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def _conversation_with_turns(turns: int, **fields: Any) -> Conversation:
    conversation = Conversation.objects.create(**fields)
    for n in range(turns):
        at = T0 + timedelta(seconds=n)
        question = Message.objects.create(
            conversation=conversation, role=Role.USER, content=f"q{n}", created_at=at
        )
        Message.objects.create(
            conversation=conversation, role=Role.ASSISTANT, content=f"a{n}", reply_to=question,
            status=Status.COMPLETE, created_at=at + timedelta(microseconds=1),
        )  # fmt: skip
    return conversation


def test_history_rows_are_the_querysets_own() -> None:
    mine = _conversation_with_turns(3)
    _conversation_with_turns(2)  # another conversation's rows stay out
    Message.objects.filter(conversation=mine, content="a1").update(superseded=True)

    for before in (T0, T0 + timedelta(seconds=1), T0 + timedelta(seconds=1, microseconds=1),
                   T0 + timedelta(days=1)):  # fmt: skip
        expected = list(
            current_messages(mine.pk).filter(created_at__lt=before).values_list("role", "content")
        )
        assert _HISTORY.rows(mine.pk, before) == expected
    assert _HISTORY.rows(mine.pk, T0 + timedelta(days=1)) == [
        ("user", "q0"), ("assistant", "a0"), ("user", "q1"), ("user", "q2"), ("assistant", "a2"),
    ]  # fmt: skip
    assert _HISTORY.rows(uuid.uuid4(), T0 + timedelta(days=1)) == []


def test_instances_match_the_orm_with_their_related_row_and_no_more_queries() -> None:
    helper = Assistant.objects.create(name="Helper", slug="helper", system_prompt="Be brief.")
    with_one = Conversation.objects.create(title="with", assistant=helper)
    without = Conversation.objects.create(title="without")

    for conversation in (with_one, without):
        with CaptureQueriesContext(connection) as queries:
            [found] = views._CONVERSATION.objects(conversation.pk)
            assistant = found.assistant
        assert len(queries) == 1
        expected = Conversation.objects.select_related("assistant").get(pk=conversation.pk)
        assert isinstance(found.pk, uuid.UUID) and found.pk == expected.pk
        assert (found.title, found.created_at, found.updated_at) == (
            expected.title, expected.created_at, expected.updated_at,
        )  # fmt: skip
        assert found.created_at.tzinfo is not None
        assert (assistant and assistant.system_prompt) == (
            expected.assistant and expected.assistant.system_prompt
        )
        assert found._state.db == "default" and not found._state.adding
    assert views._CONVERSATION.objects(uuid.uuid4()) == []

    question = Message.objects.create(
        conversation=with_one, role=Role.USER, content="hi", created_at=T0
    )
    [message] = views._MESSAGE.objects(question.pk)
    with CaptureQueriesContext(connection) as queries:
        assert message.conversation.assistant.slug == "helper"
    assert len(queries) == 0


def test_a_database_compiles_once_whichever_thread_runs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mine = _conversation_with_turns(2)
    history = Compiled(
        Message,
        lambda conversation, before: (
            current_messages(conversation).filter(created_at__lt=before).values_list("content")
        ),
        ["conversation", "created_at"],
    )
    compiled: list[int] = []
    as_sql = SQLCompiler.as_sql

    def counting(self: SQLCompiler, *args: Any, **kwargs: Any) -> Any:
        compiled.append(threading.get_ident())
        return as_sql(self, *args, **kwargs)

    monkeypatch.setattr(SQLCompiler, "as_sql", counting)
    assert history.rows(mine.pk, T0 + timedelta(seconds=1)) == [("q0",), ("a0",)]
    assert history.rows(mine.pk, T0 + timedelta(days=1)) == [("q0",), ("a0",), ("q1",), ("a1",)]
    assert compiled == [threading.get_ident()]

    answers: list[Any] = []

    def other_thread() -> None:
        try:
            answers.append(history.rows(mine.pk, T0 + timedelta(seconds=1)))
        finally:
            connection.close()

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(10)
    assert answers == [[("q0",), ("a0",)]]
    assert compiled == [threading.get_ident()]


def test_a_marker_the_query_does_not_take_is_refused_at_first_run() -> None:
    ignores_its_value = Compiled(
        Conversation, lambda pk: Conversation.objects.filter(title="x"), ["id"]
    )
    with pytest.raises(ImproperlyConfigured, match="marker"):
        ignores_its_value.objects(uuid.uuid4())


def test_the_database_session_store_reads_what_djangos_wrote_and_drops_expired_keys() -> None:
    written = DjangoStore()
    written["owner"] = "abc"
    written.save()

    store = SessionStore(written.session_key)
    assert store.load() == {"owner": "abc"}
    assert store.session_key == written.session_key

    written.set_expiry(timezone.now() - timedelta(seconds=1))
    written.save()
    expired = SessionStore(written.session_key)
    assert expired.load() == {}
    assert expired.session_key is None
    assert SessionStore("no" * 16).load() == {}


@pytest.mark.skipif(bool(os.environ.get("TEST_DATABASE_URL")), reason="on PostgreSQL already")
def test_the_same_on_postgresql() -> None:
    """Each database compiles its own dialect and prepares values its own way (UUIDs,
    timestamps): these tests again, on the machine's PostgreSQL."""
    with new_postgres_database(f"chatstream_compiled_{os.getpid()}") as url:
        if url is None:
            pytest.skip("no PostgreSQL on 127.0.0.1:5432")
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
             "-k", "not postgresql"],
            env={**os.environ, "TEST_DATABASE_URL": url}, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "5 passed" in run.stdout
