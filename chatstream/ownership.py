"""Who owns what: a signed-in user, or an anonymous visitor by an id in the session.

The id lives in the session's data, not in the session key: ``login()`` cycles
the key, and a visitor's conversations must survive signing in.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.signals import user_logged_in
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Q
from django.dispatch import receiver
from django.http import HttpRequest

from chatstream.conf import get_settings
from chatstream.exceptions import NotAuthenticated
from chatstream.models import Conversation

ANONYMOUS_OWNER_KEY = "chatstream_owner"


@dataclass(frozen=True)
class Owner:
    user_id: Any = None
    anonymous_id: str = ""

    def of(self, prefix: str = "") -> Q:
        """Rows owned by this owner; ``prefix`` reaches them through a relation."""
        if self.user_id is not None:
            return Q(**{f"{prefix}owner_id": self.user_id})
        return Q(**{f"{prefix}anonymous_owner": self.anonymous_id, f"{prefix}owner": None})

    def owns(self, conversation: Conversation) -> bool:
        """``of()`` for a row in hand: a lookup by key then needs no ownership filter."""
        if self.user_id is not None:
            return bool(conversation.owner_id == self.user_id)
        return conversation.owner_id is None and conversation.anonymous_owner == self.anonymous_id

    def assign(self, conversation: Conversation) -> None:
        conversation.owner_id = self.user_id
        conversation.anonymous_owner = self.anonymous_id

    @property
    def key(self) -> str:
        """A stable string for rate-limit counters."""
        return f"u:{self.user_id}" if self.user_id is not None else f"a:{self.anonymous_id}"


def owner_of(user: Any, session: Any, *, create: bool = False) -> Owner:
    """The owner for a ``user`` (or ``None``) and a ``session`` (or ``None``).

    One rule for every transport: HTTP requests (``get_owner``) and WebSocket
    scopes (``aget_scope_owner``). ``create`` gives a new anonymous visitor an id.
    Raises ``NotAuthenticated`` when nobody is signed in and anonymous chat is off.
    Sync: it may load the session (and the user) from their stores.
    """
    signed_in = _signed_in(user, session)
    if signed_in is not None:
        return signed_in
    anonymous_id = session.get(ANONYMOUS_OWNER_KEY)
    if not anonymous_id and create:
        anonymous_id = session[ANONYMOUS_OWNER_KEY] = uuid.uuid4().hex
    return _anonymous(anonymous_id)


async def aowner_of(user: Any, session: Any, *, create: bool = False) -> Owner:
    """``owner_of`` from async code."""
    signed_in = _signed_in(user, session)
    if signed_in is not None:
        return signed_in
    anonymous_id = await session.aget(ANONYMOUS_OWNER_KEY)
    if not anonymous_id and create:
        anonymous_id = uuid.uuid4().hex
        await session.aset(ANONYMOUS_OWNER_KEY, anonymous_id)
    return _anonymous(anonymous_id)


def _signed_in(user: Any, session: Any) -> Owner | None:
    """The user's owner; ``None`` for a visitor who may chat anonymously."""
    if user is not None and user.is_authenticated:
        return Owner(user_id=user.pk)
    if not get_settings().allow_anonymous or session is None:
        raise NotAuthenticated()
    return None


def _anonymous(anonymous_id: str | None) -> Owner:
    # Nothing can be theirs without an id yet; an id nobody holds matches nothing.
    return Owner(anonymous_id=anonymous_id or f"none-{uuid.uuid4().hex}")


def get_owner(request: HttpRequest, *, create: bool = False) -> Owner:
    """The caller of an HTTP request as an owner; see ``owner_of``."""
    return owner_of(request.user, getattr(request, "session", None), create=create)


async def aget_owner(request: HttpRequest, *, create: bool = False) -> Owner:
    """The caller of an HTTP request as an owner; see ``owner_of``."""
    return await aowner_of(await request.auser(), getattr(request, "session", None), create=create)


async def aget_scope_owner(scope: Mapping[str, Any]) -> Owner:
    """The caller of a Channels scope (``AuthMiddlewareStack``) as an owner; never creates one.

    A WebSocket only reaches conversations that exist, so an anonymous visitor
    without an id yet owns nothing.
    """
    if "session" not in scope or "user" not in scope:
        raise ImproperlyConfigured(
            "The chatstream WebSocket consumer needs scope['session'] and scope['user']: "
            "wrap its URLRouter in channels.auth.AuthMiddlewareStack."
        )
    return await aowner_of(scope["user"], scope["session"])


@receiver(user_logged_in, dispatch_uid="chatstream_adopt_anonymous_conversations")
def adopt_anonymous_conversations(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """Give the conversations a visitor had before signing in to the account."""
    if request is None or not hasattr(request, "session"):
        return
    anonymous_id = request.session.pop(ANONYMOUS_OWNER_KEY, None)
    if anonymous_id:
        Conversation.objects.filter(anonymous_owner=anonymous_id, owner=None).update(
            owner=user, anonymous_owner=""
        )
