"""Statements that every send runs, built and compiled by the ORM once per database.

On these small statements building a queryset's WHERE clause and compiling it costs
more than running it does (the history query: about 240 of its 300 µs; a reply's final
UPDATE, 210 of its 320; a turn's two-row INSERT, 200 of its 500), and a send runs them
for every reply. The ORM still writes the SQL, in each database's dialect, prepares each
value as it would, and converts the rows; only the values change between runs.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, cast

from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model, QuerySet
from django.db.models.query import get_related_populators
from django.db.models.sql import InsertQuery, UpdateQuery
from django.db.models.sql.compiler import SQLCompiler

M = TypeVar("M", bound=Model)


def _marker(field: Field[Any, Any], index: int) -> Any:
    """A value of ``field``'s type that no other parameter of a query is likely to be."""
    kind = getattr(field, "target_field", field).get_internal_type()  # a key: its target's
    if kind == "UUIDField":
        return uuid.UUID(int=index + 0xC0DE)
    if kind == "DateTimeField":
        return datetime(2001, 2, 3, 4, 5, 6, index + 0xC0DE, tzinfo=UTC)
    if kind in ("CharField", "TextField"):
        return f"compiled-marker-{index}"
    raise ImproperlyConfigured(f"No marker for a {kind}: add one to chatstream.compiled.")


class _Markers:
    """Where a compiled statement's values go: the ORM builds it with a marker for each,
    and each run puts its values where the markers landed among the parameters."""

    def __init__(self, model: type[Model], fields: Sequence[str]) -> None:
        self.fields: tuple[Field[Any, Any], ...] = tuple(
            model._meta.get_field(name)  # type: ignore[misc]
            for name in fields
        )
        self.values = tuple(_marker(field, i) for i, field in enumerate(self.fields))

    def _prepare(self, index: int, value: Any, connection: BaseDatabaseWrapper) -> Any:
        return self.fields[index].get_db_prep_value(value, connection, prepared=False)

    def slots(
        self, sql: str, params: Sequence[Any], connection: BaseDatabaseWrapper
    ) -> tuple[tuple[int, int], ...]:
        """(position in ``params``, index of the value) for each marker."""
        prepared = [self._prepare(i, m, connection) for i, m in enumerate(self.values)]
        slots = tuple(
            (position, prepared.index(param))
            for position, param in enumerate(params)
            if param in prepared
        )
        if sorted(index for _, index in slots) != list(range(len(prepared))):
            raise ImproperlyConfigured(
                f"Each marker must be a parameter of the compiled query once: {sql}"
            )
        return slots

    def bind(
        self,
        params: list[Any],
        slots: tuple[tuple[int, int], ...],
        values: Sequence[Any],
        connection: BaseDatabaseWrapper,
    ) -> list[Any]:
        for position, index in slots:
            params[position] = self._prepare(index, values[index], connection)
        return params


@dataclass(frozen=True)
class _Statement:
    compiler: SQLCompiler
    sql: str
    params: tuple[Any, ...]
    slots: tuple[tuple[int, int], ...]  # (position in params, index of the value)


class _Built(Generic[M]):
    """A statement that ``build(*values)`` makes, ``fields`` saying how each value is stored
    (as a lookup on that field prepares it)."""

    def __init__(
        self, model: type[M], build: Callable[..., QuerySet[M, Any]], fields: Sequence[str]
    ) -> None:
        self._model = model
        self._build = build
        self._markers = _Markers(model, fields)
        self._statements: dict[Any, Any] = {}


class Compiled(_Built[M]):
    """``build(*values)``, compiled once; each run puts its values where the first put markers."""

    _statements: dict[str, _Statement]  # by database alias

    def _statement(self, connection: BaseDatabaseWrapper) -> _Statement:
        statement = self._statements.get(connection.alias)
        if statement is None:
            query = self._build(*self._markers.values).using(connection.alias).query
            compiler = query.get_compiler(using=connection.alias)
            sql, params = compiler.as_sql()
            slots = self._markers.slots(sql, params, connection)
            statement = _Statement(compiler, sql, tuple(params), slots)
            self._statements[connection.alias] = statement
        return statement

    def _run(self, values: tuple[Any, ...]) -> tuple[str, SQLCompiler, Iterator[Any]]:
        connection = connections[router.db_for_read(self._model)]
        statement = self._statement(connection)
        params = self._markers.bind(list(statement.params), statement.slots, values, connection)
        with connection.cursor() as cursor:
            cursor.execute(statement.sql, params)
            rows = cursor.fetchall()
        # The compiled state, converting with this thread's connection (under ASGI
        # connections are per request, and the one that compiled may be closed).
        compiler = copy.copy(statement.compiler)
        compiler.connection = connection
        return connection.alias, compiler, compiler.results_iter([rows], tuple_expected=True)

    def rows(self, *values: Any) -> list[tuple[Any, ...]]:
        """The rows as tuples, as ``values_list`` gives them."""
        return list(self._run(values)[2])

    def objects(self, *values: Any) -> list[M]:
        """The instances, with what ``select_related`` asked for."""
        db, compiler, rows = self._run(values)
        select, klass_info = compiler.select, compiler.klass_info
        assert klass_info is not None, "objects() needs a query of model instances"
        first, last = klass_info["select_fields"][0], klass_info["select_fields"][-1] + 1
        names = [column[0].target.attname for column in select[first:last]]
        # Django 5.2's signature (pyproject keeps Django below 6); the stubs follow 6.
        populators = get_related_populators(klass_info, select, db)  # type: ignore[call-arg]
        found = []
        for row in rows:
            instance = self._model.from_db(db, names, row[first:last])
            for populator in populators:
                populator.populate(row, instance)
            found.append(instance)
        return found


def _write(connection: BaseDatabaseWrapper, sql: str, params: list[Any]) -> int:
    """Runs a write as the ORM does: an error inside ``atomic()`` marks it for rollback."""
    with transaction.mark_for_rollback_on_error(connection.alias), connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def _for_save(field: Field[Any, Any], value: Any, connection: BaseDatabaseWrapper) -> Any:
    if hasattr(value, "resolve_expression") or hasattr(value, "prepare_database_save"):
        raise TypeError(f"A compiled write takes plain values, not {value!r} for {field.name}.")
    return field.get_db_prep_save(value, connection=connection)


@dataclass(frozen=True)
class _Update:
    sql: str
    where: tuple[Any, ...]  # the WHERE clause's parameters, markers in its slots
    slots: tuple[tuple[int, int], ...]


class CompiledUpdate(_Built[M]):
    """``build(*values).update(**changes)``, compiled once per database and kind of change.

    Which fields change, and which of them become NULL, shape the SQL: each such kind
    compiles once (a caller has a few). The first run of each checks that the ORM
    prepared the changes as this does.
    """

    _statements: dict[tuple[Any, ...], _Update]

    def update(self, changes: Mapping[str, Any], *values: Any) -> int:
        """The number of rows changed."""
        connection = connections[router.db_for_write(self._model)]
        get_field = self._model._meta.get_field
        prepared = [
            _for_save(get_field(name), value, connection)  # type: ignore[arg-type]
            for name, value in changes.items()
        ]
        key = (connection.alias, *changes, *(value is None for value in prepared))
        statement = self._statements.get(key)
        if statement is None:
            statement = self._statements[key] = self._compile(changes, prepared, connection)
        params = [value for value in prepared if value is not None]
        params += self._markers.bind(list(statement.where), statement.slots, values, connection)
        return _write(connection, statement.sql, params)

    def _compile(
        self, changes: Mapping[str, Any], prepared: list[Any], connection: BaseDatabaseWrapper
    ) -> _Update:
        query = cast(UpdateQuery, self._build(*self._markers.values).query.chain(UpdateQuery))
        query.add_update_values(dict(changes))
        query.annotations = {}  # as QuerySet.update() leaves it
        sql, params = query.get_compiler(using=connection.alias).as_sql()
        changed = [value for value in prepared if value is not None]
        if not _same(list(params[: len(changed)]), changed):
            raise ImproperlyConfigured(f"The ORM prepared these changes otherwise: {sql}")
        where = tuple(params[len(changed) :])
        return _Update(sql, where, self._markers.slots(sql, where, connection))


@dataclass(frozen=True)
class _Insert:
    sql: str
    by_column: bool  # the parameters as one list per column (PostgreSQL's UNNEST), not rows


class CompiledInsert(Generic[M]):
    """``bulk_create(rows)`` for rows whose keys are set, compiled once per database and
    number of rows; its first run checks that the ORM prepared the values as this does."""

    def __init__(self, model: type[M]) -> None:
        self._model = model
        self._fields = [field for field in model._meta.concrete_fields if not field.generated]
        self._statements: dict[tuple[str, int], _Insert] = {}

    def insert(self, objs: Sequence[M]) -> None:
        connection = connections[router.db_for_write(self._model)]
        for obj in objs:
            if obj.pk is None:
                raise ValueError("A compiled insert takes rows whose keys are set.")
            # As bulk_create() does: a related row's key, and no unsaved related row.
            obj._prepare_related_fields_for_save(operation_name="bulk_create")  # type: ignore[attr-defined]
        statement = self._statements.get((connection.alias, len(objs)))
        if statement is None:
            statement = self._compile(objs, connection)
            self._statements[(connection.alias, len(objs))] = statement
        rows = [
            [_for_save(field, field.pre_save(obj, True), connection) for field in self._fields]
            for obj in objs
        ]
        params = _by_column(rows) if statement.by_column else [v for row in rows for v in row]
        _write(connection, statement.sql, params)
        for obj in objs:
            obj._state.adding = False
            obj._state.db = connection.alias

    def _compile(self, objs: Sequence[M], connection: BaseDatabaseWrapper) -> _Insert:
        query = InsertQuery(self._model)
        query.insert_values(self._fields, list(objs))
        statements = query.get_compiler(using=connection.alias).as_sql()
        if len(statements) != 1:
            raise ImproperlyConfigured(f"{len(objs)} rows take one INSERT here, not {statements}")
        [(sql, params)] = statements
        rows = [  # the values as the ORM's pre_save() just left them on the rows
            [_for_save(field, getattr(obj, field.attname), connection) for field in self._fields]
            for obj in objs
        ]
        if _same(list(params), [value for row in rows for value in row]):
            return _Insert(sql, by_column=False)
        if _same(list(params), _by_column(rows)):
            return _Insert(sql, by_column=True)
        raise ImproperlyConfigured(f"The ORM prepared these rows otherwise: {sql}")


def _same(theirs: Any, ours: Any) -> bool:
    """Equal parameters; a driver's adapters (psycopg's ``Jsonb``) by what their repr shows."""
    if isinstance(theirs, list) and isinstance(ours, list):
        return len(theirs) == len(ours) and all(map(_same, theirs, ours))
    return type(theirs) is type(ours) and (theirs == ours or repr(theirs) == repr(ours))


def _by_column(rows: list[list[Any]]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)]
