"""Queries that every send runs, built and compiled by the ORM once per database.

On these small lookups building a queryset's WHERE clause and compiling it costs
several times what running it does (the history query: about 240 of its 300 µs),
and a send runs them for every reply. The ORM still writes the SQL, in each
database's dialect, and converts the rows; only the values change between runs.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model, QuerySet
from django.db.models.query import get_related_populators
from django.db.models.sql.compiler import SQLCompiler

M = TypeVar("M", bound=Model)


@dataclass(frozen=True)
class _Statement:
    compiler: SQLCompiler
    sql: str
    params: tuple[Any, ...]
    slots: tuple[tuple[int, int], ...]  # (position in params, index of the value)


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


class Compiled(Generic[M]):
    """``build(*values)``, compiled once; each run puts its values where the first put markers.

    ``fields`` say how each value is stored (as a lookup on that field prepares it).
    """

    def __init__(
        self, model: type[M], build: Callable[..., QuerySet[M, Any]], fields: Sequence[str]
    ) -> None:
        self._model = model
        self._build = build
        self._fields: tuple[Field[Any, Any], ...] = tuple(
            model._meta.get_field(name)  # type: ignore[misc]
            for name in fields
        )
        self._markers = tuple(_marker(field, i) for i, field in enumerate(self._fields))
        self._statements: dict[str, _Statement] = {}  # by database alias

    def _statement(self, connection: BaseDatabaseWrapper) -> _Statement:
        statement = self._statements.get(connection.alias)
        if statement is None:
            query = self._build(*self._markers).using(connection.alias).query
            compiler = query.get_compiler(using=connection.alias)
            sql, params = compiler.as_sql()
            prepared = [self._prepare(i, m, connection) for i, m in enumerate(self._markers)]
            slots = tuple(
                (position, prepared.index(param))
                for position, param in enumerate(params)
                if param in prepared
            )
            if sorted(index for _, index in slots) != list(range(len(prepared))):
                raise ImproperlyConfigured(
                    f"Each marker must be a parameter of the compiled query once: {sql}"
                )
            statement = _Statement(compiler, sql, tuple(params), slots)
            self._statements[connection.alias] = statement
        return statement

    def _prepare(self, index: int, value: Any, connection: BaseDatabaseWrapper) -> Any:
        return self._fields[index].get_db_prep_value(value, connection, prepared=False)

    def _run(self, values: tuple[Any, ...]) -> tuple[str, SQLCompiler, Iterator[Any]]:
        connection = connections[router.db_for_read(self._model)]
        statement = self._statement(connection)
        params = list(statement.params)
        for position, index in statement.slots:
            params[position] = self._prepare(index, values[index], connection)
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
