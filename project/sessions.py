"""Sessions read from Redis and kept in the database: a request's session costs no query.

Django's ``cached_db`` store, made to ride out Redis going away. Django's own lets a
cache error escape from ``load`` (it writes back what it read from the table),
``exists`` and ``delete``: with Redis down, every request with a session would answer
500, where the page should still load and a send answer the contract's 503. Here a
cache error falls back to the table, which stays the truth (every save writes it
first), and is logged.

A sign-out during an outage deletes the row, but it cannot delete a cached copy that
Redis may still hold when it comes back. Copies are therefore cached for at most
``CACHE_SECONDS``, and that bounds how long such a copy can outlive the sign-out.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.sessions.backends import cached_db
from django.contrib.sessions.backends.db import SessionStore as DBStore

#: The longest a session stays in the cache; a miss costs one query and refills it.
CACHE_SECONDS = 300

logger = logging.getLogger(__name__)


class SessionStore(cached_db.SessionStore):
    def load(self) -> dict[str, Any]:
        try:
            data = self._cache.get(self.cache_key)
        except Exception as exc:  # Redis down, or a key the backend refuses
            _failed("read", exc)
            data = None
        if data is not None:
            return data
        row = self._get_session_from_db()
        if row is None:
            return {}
        data = self.decode(row.session_data)
        self._keep(data, self.get_expiry_age(expiry=row.expire_date))
        return data

    def save(self, must_create: bool = False) -> None:
        DBStore.save(self, must_create)
        self._keep(self._session, self.get_expiry_age())

    def exists(self, session_key: str) -> bool:
        if session_key:
            try:
                if self.cache_key_prefix + session_key in self._cache:
                    return True
            except Exception as exc:
                _failed("read", exc)
        return DBStore.exists(self, session_key)

    def delete(self, session_key: str | None = None) -> None:
        DBStore.delete(self, session_key)
        session_key = session_key or self.session_key
        if session_key is None:
            return
        try:
            self._cache.delete(self.cache_key_prefix + session_key)
        except Exception as exc:
            _failed("delete", exc)

    def _keep(self, data: dict[str, Any], age: int) -> None:
        try:
            self._cache.set(self.cache_key, data, min(age, CACHE_SECONDS))
        except Exception as exc:
            _failed("write", exc)

    # Django's async variants call the cache and the table each through a thread
    # anyway (neither backend is async): one hop for the whole operation instead.
    async def aload(self) -> dict[str, Any]:
        return await sync_to_async(self.load)()

    async def asave(self, must_create: bool = False) -> None:
        await sync_to_async(self.save)(must_create)

    async def aexists(self, session_key: str) -> bool:
        return await sync_to_async(self.exists)(session_key)

    async def adelete(self, session_key: str | None = None) -> None:
        await sync_to_async(self.delete)(session_key)


def _failed(what: str, exc: Exception) -> None:
    logger.warning("Session cache %s failed, the database answers: %s", what, exc)
