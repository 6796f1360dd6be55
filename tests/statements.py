"""Seeing every SQL statement, from every thread's connection, whichever way it runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db.backends.utils import CursorWrapper

from chatstream import compiled


def on_statements(monkeypatch: pytest.MonkeyPatch, see: Callable[[str], None]) -> None:
    """Calls ``see(sql)`` before each statement runs; it may raise as the database would.

    The ORM's statements pass through Django's cursor; ``chatstream.compiled`` runs its
    own on the driver's cursor (through Django's when queries are logged, seen there).
    """
    through_django = CursorWrapper._execute_with_wrappers
    on_the_driver = compiled._execute

    def django_cursor(self: CursorWrapper, sql: str, *args: Any, **kwargs: Any) -> Any:
        see(sql)
        return through_django(self, sql, *args, **kwargs)

    def driver_cursor(connection: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
        if not connection.queries_logged:
            see(sql)
        return on_the_driver(connection, sql, *args, **kwargs)

    monkeypatch.setattr(CursorWrapper, "_execute_with_wrappers", django_cursor)
    monkeypatch.setattr(compiled, "_execute", driver_cursor)
