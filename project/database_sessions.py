"""Sessions in the database (when there is no Redis), read with a query compiled once.

Every request that carries a session reads its row, a send included, and building
Django's ``get()`` for it costs more than running it; so does building a model
instance (and its init signals) for the one column that is read.
"""

from __future__ import annotations

from typing import Any

from django.contrib.sessions.backends import db
from django.contrib.sessions.models import Session
from django.utils import timezone

from chatstream.compiled import Compiled

_LIVE = Compiled(
    Session,
    lambda key, now: Session.objects.filter(session_key=key, expire_date__gt=now).values_list(
        "session_data"
    ),
    ["session_key", "expire_date"],
)


class SessionStore(db.SessionStore):
    def load(self) -> dict[str, Any]:
        found = _LIVE.rows(self.session_key, timezone.now())
        if found:
            return self.decode(found[0][0])
        self._session_key = None
        return {}
