"""The Python API: start, stop, wait for and follow replies from a project's own code.

The HTTP API, the WebSocket consumer and this module share one path: the same
limits, the same generation, log and stop. A reply started here streams to the
chat page and the SSE API like any other, and ``follow`` reads it the way they do
(resumable from any offset, from the log or the database)::

    from chatstream import api

    started = await api.start_reply("Hello!", user=request.user)
    async for part in api.follow(started.reply.pk):
        if isinstance(part, api.Text):
            ...  # part.kind is "answer" or "reasoning"; part.offset is the event id
        else:
            ...  # api.End: part.status, part.message (the API's message shape)

Business work after a reply belongs in a ``reply_finished`` receiver (re-exported
here): it fires once per reply however the reply ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from django.urls import NoReverseMatch, reverse

from chatstream import reading, turns
from chatstream.ending import recover
from chatstream.exceptions import BadRequest, NotFound
from chatstream.models import Assistant, Conversation, Message, Status
from chatstream.ownership import Owner
from chatstream.replylog import get_reply_log
from chatstream.replylog.base import PartKind
from chatstream.signals import reply_finished

__all__ = [
    "End",
    "StartedReply",
    "Text",
    "follow",
    "reply_finished",
    "start_reply",
    "stop",
    "wait",
]


@dataclass(frozen=True)
class StartedReply:
    conversation: Conversation
    question: Message
    reply: Message
    #: The reply's SSE URL, or ``None`` when the project mounts no chatstream API URLs.
    stream_url: str | None


@dataclass(frozen=True)
class Text:
    kind: PartKind  # "answer" or "reasoning"
    text: str
    offset: int  # the reply's length (both kinds) after this text: resume from here


@dataclass(frozen=True)
class End:
    status: str
    offset: int
    #: The persisted message, in the API's message shape.
    message: Mapping[str, Any]
    error: Mapping[str, str] | None = None


def _owner(user: Any, anonymous_id: str) -> Owner:
    if user is not None and getattr(user, "is_authenticated", False):
        return Owner(user_id=user.pk)
    if anonymous_id:
        return Owner(anonymous_id=anonymous_id)
    raise BadRequest("Give a signed-in user or an anonymous_id to own the conversation.")


async def start_reply(
    content: str,
    *,
    user: Any = None,
    anonymous_id: str = "",
    conversation: Conversation | None = None,
    assistant: Assistant | str | None = None,
) -> StartedReply:
    """Store ``content`` as the owner's message and start the reply; returns at once.

    The owner is ``user`` (signed in) or, for anonymous visitors, ``anonymous_id``.
    Without ``conversation`` a new one is made, by ``assistant`` (an Assistant or
    its slug; default: the default assistant). Raises the API's errors
    (``chatstream.exceptions``): limits, a reply already streaming there, ...
    """
    owner = _owner(user, anonymous_id)
    if isinstance(assistant, str):
        assistant = await Assistant.objects.filter(slug=assistant, is_active=True).afirst()
        if assistant is None:
            raise BadRequest("No active assistant has that slug.", code="unknown_assistant")
    if conversation is None:
        conversation = Conversation(assistant=assistant or await turns.adefault_assistant())
        owner.assign(conversation)
        await conversation.asave()
    elif not await Conversation.objects.filter(owner.of(), pk=conversation.pk).aexists():
        raise NotFound("No such conversation for this owner.")
    question, reply = await turns.astart_reply(owner, conversation, content)
    try:
        stream_url: str | None = reverse("chatstream:stream", args=[reply.pk])
    except NoReverseMatch:
        stream_url = None
    return StartedReply(conversation, question, reply, stream_url)


async def follow(reply_id: Any, offset: int = 0) -> AsyncIterator[Text | End]:
    """The reply's text after ``offset``, part by part, then its ``End``.

    Follows a live reply as it streams (from any worker, with the Redis log) and a
    finished one from the database. Raises ``ReplyLogUnavailable`` when the log
    cannot be reached: follow again from the last offset later.
    """
    async with contextlib.aclosing(reading.follow(str(reply_id), offset)) as items:
        async for item in items:
            if isinstance(item, reading.Delta):
                yield Text(item.kind, item.text, item.end)
            elif isinstance(item, reading.Ending):
                final = item.final
                yield End(final["status"], item.end, final["message"], final.get("error"))


async def wait(reply_id: Any, timeout: float | None = None) -> Message:
    """Wait for the reply to end (``TimeoutError`` past ``timeout``); returns its row."""
    async with asyncio.timeout(timeout):
        async for part in follow(reply_id, 0):
            if isinstance(part, End):
                break
    return await Message.objects.aget(pk=reply_id)


async def stop(reply_id: Any) -> str:
    """Stop the reply wherever it runs (idempotent); returns its status now.

    ``"stopping"`` while its generation closes the upstream, else the final status.
    """
    reply_id, log = str(reply_id), get_reply_log()
    message = await Message.objects.aget(pk=reply_id)
    if message.status != Status.STREAMING:
        return message.status
    if await log.is_alive(reply_id):
        await log.request_stop(reply_id)
        return "stopping"
    recovered = await recover(reply_id, log)
    return recovered.status if recovered is not None else "stopping"
