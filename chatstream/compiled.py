"""Statements that every send runs, built and compiled by the ORM once per database.

On these small statements building a queryset's WHERE clause and compiling it costs
more than running it does (the history query: about 240 of its 300 µs; a reply's final
UPDATE, 210 of its 320; a turn's two-row INSERT, 200 of its 500), and a send runs them
for every reply. The ORM still writes the SQL, in each database's dialect, prepares each
value as it would, and converts the rows; only the values change between runs.

They run on the database driver's own cursor: on statements this small, Django's cursor
wrapper and SQLite's rewriting of ``%s`` into ``?`` on every run cost about as much as
the driver's work. What a Django cursor gives that a caller could see is kept: errors
as Django's exceptions, a failed write marking ``atomic()`` for rollback, the
connection's ``execute_wrappers``, and, where queries are logged (``DEBUG``, tests that
count them), Django's own cursor, which logs them. Tools that patch Django's
``CursorWrapper`` itself do not see these statements.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, cast

from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.sqlite3.base import FORMAT_QMARK_REGEX
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


def _for_driver(sql: str, connection: BaseDatabaseWrapper) -> str:
    """``sql`` in the parameter style of the cursor ``_execute`` runs it on."""
    if connection.vendor == "sqlite":  # as Django's SQLite cursor rewrites it on every run
        return FORMAT_QMARK_REGEX.sub("?", sql).replace("%%", "%")
    return sql


def _execute(
    connection: BaseDatabaseWrapper, sql: str, driver_sql: str, params: Sequence[Any], fetch: bool
) -> tuple[list[Any], int]:
    """(the rows if ``fetch``, the row count) of ``sql``, run as the module's docstring says."""
    if connection.queries_logged:
        with connection.cursor() as logged:
            logged.execute(sql, params)
            return (logged.fetchall() if fetch else []), logged.rowcount
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    connection.validate_no_broken_transaction()
    with connection.wrap_database_errors:
        # SQLite's own cursor takes the ? form; other backends' create_cursor() takes Django's.
        cursor = (
            connection.connection.cursor()
            if connection.vendor == "sqlite"
            else connection.create_cursor()
        )
        try:
            if connection.execute_wrappers:
                _run_wrapped(connection, cursor, sql, driver_sql, params)
            else:
                cursor.execute(driver_sql, params)
            return (cursor.fetchall() if fetch else []), cursor.rowcount
        finally:
            cursor.close()


def _run_wrapped(
    connection: BaseDatabaseWrapper, cursor: Any, sql: str, driver_sql: str, params: Any
) -> Any:
    """The wrappers see the SQL in Django's form, as its cursor gives it, and may change it."""

    def execute(wrapped: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        return cursor.execute(
            driver_sql if wrapped == sql else _for_driver(wrapped, connection), params
        )

    for wrapper in reversed(connection.execute_wrappers):
        execute = functools.partial(wrapper, execute)
    return execute(sql, params, False, {"connection": connection, "cursor": cursor})


@dataclass(frozen=True)
class _Instances:
    """How a row becomes a model instance and what ``select_related`` asked for."""

    first: int  # the model's own columns: row[first:last]
    last: int
    names: list[str]
    populators: list[Any]  # Django's RelatedPopulator: no state of a run's own


@dataclass(frozen=True)
class _Statement:
    sql: str
    driver_sql: str
    params: tuple[Any, ...]
    slots: tuple[tuple[int, int], ...]  # (position in params, index of the value)
    # Position: (converters, expression). Converters take the connection of each run: under
    # ASGI connections are per request, and the one that compiled may be closed.
    converters: dict[int, tuple[list[Any], Any]]
    instances: _Instances | None


def _instances(compiler: SQLCompiler, db: str) -> _Instances | None:
    select, klass_info = compiler.select, compiler.klass_info
    if klass_info is None:
        return None
    first, last = klass_info["select_fields"][0], klass_info["select_fields"][-1] + 1
    names = [column[0].target.attname for column in select[first:last]]
    # Django 5.2's signature (pyproject keeps Django below 6); the stubs follow 6.
    populators = get_related_populators(klass_info, select, db)  # type: ignore[call-arg]
    return _Instances(first, last, names, populators)


def _converted(
    rows: list[Any], converters: dict[int, tuple[list[Any], Any]], connection: BaseDatabaseWrapper
) -> list[tuple[Any, ...]]:
    """As the compiler's ``apply_converters()``."""
    converted = []
    for row in map(list, rows):
        for position, (functions, expression) in converters.items():
            value = row[position]
            for convert in functions:
                value = convert(value, expression, connection)
            row[position] = value
        converted.append(tuple(row))
    return converted


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
            columns = [column[0] for column in compiler.select[: compiler.col_count]]
            if compiler.has_composite_fields(columns):
                raise ImproperlyConfigured(f"A compiled query reads no composite field: {sql}")
            statement = _Statement(
                sql,
                _for_driver(sql, connection),
                tuple(params),
                self._markers.slots(sql, params, connection),
                compiler.get_converters(columns),
                _instances(compiler, connection.alias),
            )
            self._statements[connection.alias] = statement
        return statement

    def _run(self, values: tuple[Any, ...]) -> tuple[str, _Statement, list[tuple[Any, ...]]]:
        connection = connections[router.db_for_read(self._model)]
        statement = self._statement(connection)
        params = self._markers.bind(list(statement.params), statement.slots, values, connection)
        rows, _ = _execute(connection, statement.sql, statement.driver_sql, params, fetch=True)
        if statement.converters:
            rows = _converted(rows, statement.converters, connection)
        return connection.alias, statement, rows

    def rows(self, *values: Any) -> list[tuple[Any, ...]]:
        """The rows as tuples, as ``values_list`` gives them."""
        return self._run(values)[2]

    def objects(self, *values: Any) -> list[M]:
        """The instances, with what ``select_related`` asked for."""
        db, statement, rows = self._run(values)
        how = statement.instances
        assert how is not None, "objects() needs a query of model instances"
        found = []
        for row in rows:
            instance = self._model.from_db(db, how.names, row[how.first : how.last])
            for populator in how.populators:
                populator.populate(row, instance)
            found.append(instance)
        return found


def _write(connection: BaseDatabaseWrapper, sql: str, driver_sql: str, params: list[Any]) -> int:
    """Runs a write as the ORM does: an error inside ``atomic()`` marks it for rollback."""
    with transaction.mark_for_rollback_on_error(connection.alias):
        return _execute(connection, sql, driver_sql, params, fetch=False)[1]


def _for_save(field: Field[Any, Any], value: Any, connection: BaseDatabaseWrapper) -> Any:
    if hasattr(value, "resolve_expression") or hasattr(value, "prepare_database_save"):
        raise TypeError(f"A compiled write takes plain values, not {value!r} for {field.name}.")
    return field.get_db_prep_save(value, connection=connection)


@dataclass(frozen=True)
class _Update:
    sql: str
    driver_sql: str
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
        return _write(connection, statement.sql, statement.driver_sql, params)

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
        slots = self._markers.slots(sql, where, connection)
        return _Update(sql, _for_driver(sql, connection), where, slots)


@dataclass(frozen=True)
class _Insert:
    sql: str
    driver_sql: str
    by_column: bool  # the parameters as one list per column (PostgreSQL's UNNEST), not rows
    # By field: its constant default and that prepared, or None. Most of a new row's
    # fields hold their default, and preparing each costs more than the INSERT's binding.
    defaults: tuple[tuple[Any, Any] | None, ...]


def _constant_default(
    field: Field[Any, Any], connection: BaseDatabaseWrapper
) -> tuple[Any, Any] | None:
    """(the default, prepared) where every row's is the same, and saving it prepares just that."""
    if (
        (field.has_default() and callable(field.default))
        or field.has_db_default()
        or type(field).pre_save is not Field.pre_save
    ):
        return None
    default = field.get_default()
    return default, _for_save(field, default, connection)


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
            self._prepared(
                [field.pre_save(obj, True) for field in self._fields],
                statement.defaults,
                connection,
            )
            for obj in objs
        ]
        params = _by_column(rows) if statement.by_column else [v for row in rows for v in row]
        _write(connection, statement.sql, statement.driver_sql, params)
        for obj in objs:
            obj._state.adding = False
            obj._state.db = connection.alias

    def _prepared(
        self,
        values: list[Any],
        defaults: tuple[tuple[Any, Any] | None, ...],
        connection: BaseDatabaseWrapper,
    ) -> list[Any]:
        """A row's ``values`` (by field) as saving prepares them."""
        return [
            default[1]
            if default is not None and type(value) is type(default[0]) and value == default[0]
            else _for_save(field, value, connection)
            for field, value, default in zip(self._fields, values, defaults, strict=True)
        ]

    def _compile(self, objs: Sequence[M], connection: BaseDatabaseWrapper) -> _Insert:
        defaults = tuple(_constant_default(field, connection) for field in self._fields)
        query = InsertQuery(self._model)
        query.insert_values(self._fields, list(objs))
        statements = query.get_compiler(using=connection.alias).as_sql()
        if len(statements) != 1:
            raise ImproperlyConfigured(f"{len(objs)} rows take one INSERT here, not {statements}")
        [(sql, params)] = statements
        rows = [  # the values as the ORM's pre_save() just left them on the rows
            self._prepared(
                [getattr(obj, field.attname) for field in self._fields], defaults, connection
            )
            for obj in objs
        ]
        if _same(list(params), [value for row in rows for value in row]):
            return _Insert(sql, _for_driver(sql, connection), False, defaults)
        if _same(list(params), _by_column(rows)):
            return _Insert(sql, _for_driver(sql, connection), True, defaults)
        raise ImproperlyConfigured(f"The ORM prepared these rows otherwise: {sql}")


def _same(theirs: Any, ours: Any) -> bool:
    """Equal parameters; a driver's adapters (psycopg's ``Jsonb``) by what their repr shows."""
    if isinstance(theirs, list) and isinstance(ours, list):
        return len(theirs) == len(ours) and all(map(_same, theirs, ours))
    return type(theirs) is type(ours) and (theirs == ours or repr(theirs) == repr(ours))


def _by_column(rows: list[list[Any]]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)]
