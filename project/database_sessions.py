"""Sessions in the database (when there is no Redis), read with a query compiled once.

Every request that carries a session reads its row, a send included, and building
Django's ``get()`` for it costs more than running it.
"""

from __future__ import annotations

from django.contrib.sessions.backends import db
from django.contrib.sessions.models import Session
from django.utils import timezone

from chatstream.compiled import Compiled

_LIVE = Compiled(
    Session,
    lambda key, now: Session.objects.filter(session_key=key, expire_date__gt=now),
    ["session_key", "expire_date"],
)


class SessionStore(db.SessionStore):
    def _get_session_from_db(self) -> Session | None:
        found = _LIVE.objects(self.session_key, timezone.now())
        if found:
            return found[0]
        self._session_key = None
        return None
