"""Queries compiled once: the same rows and instances as the ORM's own, on every run."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.sessions.backends.db import SessionStore as DjangoStore
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, connection, transaction
from django.db.models.sql.compiler import SQLCompiler, SQLInsertCompiler, SQLUpdateCompiler
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chatstream import views
from chatstream.compiled import Compiled, CompiledInsert, CompiledUpdate
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


def _counting(monkeypatch: pytest.MonkeyPatch, compiler: type[SQLCompiler]) -> list[int]:
    """Counts the ``compiler``'s statements on messages from now on."""
    compiled: list[int] = []
    as_sql = compiler.as_sql

    def counting(self: SQLCompiler, *args: Any, **kwargs: Any) -> Any:
        if self.query.model is Message:
            compiled.append(1)
        return as_sql(self, *args, **kwargs)

    monkeypatch.setattr(compiler, "as_sql", counting)
    return compiled


def _turn(n: int) -> list[Message]:
    """A question and its streaming reply, in a conversation of their own (one streams at
    a time in each)."""
    conversation = Conversation.objects.create()
    question = Message(
        conversation=conversation, role=Role.USER, content=f"q{n} ✓", created_at=T0,
        finished_at=T0, layout={"parts": [n]},
    )  # fmt: skip
    reply = Message(
        conversation=conversation, role=Role.ASSISTANT, status=Status.STREAMING,
        reply_to=question, model="m", cost=Decimal("0.00012345"), created_at=T0,
    )  # fmt: skip
    return [question, reply]


def _stored(pks: list[Any]) -> list[dict[str, Any]]:
    rows = {row["id"]: row for row in Message.objects.filter(pk__in=pks).values()}
    return [{**rows[pk], "id": None, "conversation_id": None, "reply_to_id": None} for pk in pks]


def test_an_insert_stores_what_bulk_create_stores_and_compiles_once_per_row_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    insert = CompiledInsert(Message)
    by_orm = _turn(0)
    Message.objects.bulk_create(by_orm)
    compiled = _counting(monkeypatch, SQLInsertCompiler)

    for n in (0, 1):
        mine = _turn(n)
        insert.insert(mine)
        assert all(not m._state.adding and m._state.db == "default" for m in mine)
        stored = _stored([m.pk for m in mine])
        assert stored[1]["reply_to_id"] is None  # compared apart: each pair its own question
        assert Message.objects.get(pk=mine[1].pk).reply_to_id == mine[0].pk
        if n == 0:
            assert stored == _stored([m.pk for m in by_orm])
        else:
            assert stored[0]["content"] == "q1 ✓" and stored[0]["layout"] == {"parts": [1]}
    assert len(compiled) == 1
    insert.insert(_turn(2)[:1])
    assert len(compiled) == 2  # another number of rows is another statement
    assert Message.objects.count() == 7


def test_an_insert_refuses_rows_without_keys_or_with_unsaved_related_rows() -> None:
    insert = CompiledInsert(Message)
    question, reply = _turn(0)
    question.pk = None
    with pytest.raises(ValueError, match="keys are set"):
        insert.insert([question])
    with pytest.raises(ValueError, match="unsaved related object"):
        insert.insert([reply])  # its question has no key, so cannot have been saved
    assert not Message.objects.exists()


def test_a_failed_insert_inside_atomic_rolls_the_block_back() -> None:
    insert = CompiledInsert(Message)
    first = _turn(0)
    insert.insert(first)
    again = _turn(1)
    again[0].pk = first[0].pk
    with pytest.raises(IntegrityError), transaction.atomic():
        Conversation.objects.update(title="changed")
        insert.insert(again[:1])
    assert Message.objects.count() == 2
    assert set(Conversation.objects.values_list("title", flat=True)) == {""}


def test_an_update_changes_what_queryset_update_changes_nulls_included(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    streaming = CompiledUpdate(
        Message, lambda pk, status: Message.objects.filter(pk=pk, status=status), ["id", "status"]
    )
    mine, by_orm = _turn(0), _turn(0)
    Message.objects.bulk_create(mine + by_orm)
    compiled = _counting(monkeypatch, SQLUpdateCompiler)
    changes: list[dict[str, Any]] = [
        {"content": "so far", "layout": None, "cost": None},
        {"content": "more ✓", "layout": {"parts": ["a"]}, "cost": Decimal("1.5")},
        {"content": "so far", "layout": None, "cost": None},
        {"content": "done", "layout": {"parts": []}, "cost": Decimal("0.25"),
         "status": Status.COMPLETE, "finished_at": T0 + timedelta(seconds=1)},
    ]  # fmt: skip
    for fields in changes:
        assert streaming.update(fields, str(mine[1].pk), Status.STREAMING) == 1
        Message.objects.filter(pk=by_orm[1].pk, status=Status.STREAMING).update(**fields)
        assert _stored([mine[1].pk]) == _stored([by_orm[1].pk])
    assert len(compiled) == 3 + len(changes)  # three kinds compiled, the ORM's every time
    assert streaming.update({"content": "late"}, mine[1].pk, Status.STREAMING) == 0
    assert Message.objects.get(pk=mine[1].pk).content == "done"
    with pytest.raises(TypeError, match="plain values"):
        streaming.update({"content": Message.objects.none()}, mine[1].pk, Status.STREAMING)


def test_statements_on_the_driver_pass_the_connections_wrappers_and_are_logged_when_asked() -> None:
    mine = _conversation_with_turns(1)
    seen: list[tuple[str, str]] = []

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append((sql.split()[0], context["connection"].alias))
        assert "%s" in sql and "?" not in sql  # Django's form, as its own cursor gives it
        return execute(f"/* tagged */ {sql}", params, many, context)  # e.g. sqlcommenter

    with connection.execute_wrapper(wrapper):
        assert _HISTORY.rows(mine.pk, T0 + timedelta(days=1)) == [
            ("user", "q0"),
            ("assistant", "a0"),
        ]
        assert (
            CompiledUpdate(
                Conversation, lambda pk: Conversation.objects.filter(pk=pk), ["id"]
            ).update({"title": "renamed"}, mine.pk)
            == 1
        )
    assert seen == [("SELECT", "default"), ("UPDATE", "default")]
    assert Conversation.objects.get(pk=mine.pk).title == "renamed"
    with CaptureQueriesContext(connection) as queries:
        _HISTORY.rows(mine.pk, T0)
    assert [query["sql"].split()[0] for query in queries] == ["SELECT"]


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
    assert "10 passed" in run.stdout
