"""A person's conversations, newest first, in pages of 50, optionally searched.

Pages are cut by a cursor (the last row's ``updated_at`` and id), not an offset: a
conversation that moves to the top while someone pages is neither skipped nor shown
twice on later pages. Search matches titles and the text of current messages: with
PostgreSQL's full-text search (web-search syntax, English stemming) when the
database is PostgreSQL, a plain case-insensitive match elsewhere.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from django.db import connection
from django.db.models import Exists, OuterRef, Q, QuerySet

from chatstream.exceptions import BadRequest
from chatstream.models import Conversation, Message
from chatstream.ownership import Owner

PAGE = 50


def encode_cursor(row: Conversation) -> str:
    raw = json.dumps([row.updated_at.isoformat(), str(row.pk)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        updated, pk = json.loads(raw)
        return datetime.fromisoformat(updated), str(pk)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise BadRequest("The cursor is not one this API gave.", code="invalid_cursor") from None


def _matching(rows: QuerySet[Conversation], q: str) -> QuerySet[Conversation]:
    messages = Message.objects.filter(conversation=OuterRef("pk"), superseded=False)
    if connection.vendor == "postgresql":
        # Imported here: it needs psycopg, which only PostgreSQL projects install.
        from django.contrib.postgres.search import SearchQuery, SearchVector  # noqa: PLC0415

        query = SearchQuery(q, search_type="websearch", config="english")
        in_title = Q(title_vector=query)
        rows = rows.annotate(title_vector=SearchVector("title", config="english"))
        words = messages.annotate(v=SearchVector("content", config="english")).filter(v=query)
        return rows.filter(in_title | Exists(words))
    return rows.filter(Q(title__icontains=q) | Exists(messages.filter(content__icontains=q)))


def page(owner: Owner, q: str = "", cursor: str = "") -> tuple[list[Conversation], str | None]:
    """One page of the owner's conversations and the cursor of the next (``None``: last)."""
    rows = Conversation.objects.filter(owner.of()).select_related("assistant")
    if q.strip():
        rows = _matching(rows, q.strip())
    if cursor:
        updated, pk = _decode_cursor(cursor)
        rows = rows.filter(Q(updated_at__lt=updated) | Q(updated_at=updated, pk__lt=pk))
    found = list(rows.order_by("-updated_at", "-pk")[: PAGE + 1])
    more = len(found) > PAGE
    found = found[:PAGE]
    return found, encode_cursor(found[-1]) if more else None
