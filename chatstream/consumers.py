"""The optional WebSocket transport: one Channels consumer per open conversation.

It is a second reader of the same reply log as the SSE view, and starts and
stops replies through the same functions as the HTTP API; the generation never
belongs to the connection, so a disconnect ends only this connection's reader.

Channels hands a consumer one message at a time, so a consumer that awaited a
whole reply could not hear ``stop``. The reply is therefore followed by a reader
task that the consumer owns (cancelled and awaited when the connection ends).
There is one reader at a time per connection, and it pulls instead of being
pushed: it asks the log for all text after its offset, sends that as one frame,
awaits the send, and only then asks again (``FLUSH_INTERVAL`` apart at least). Frames
never overlap, they merge when the client is slow, and what a slow client costs
is bounded by the reply's size, never by its number of tokens. Every frame goes
out under one lock, so control frames never interleave with a reader's send.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from chatstream import reading, turns
from chatstream.ending import recover
from chatstream.exceptions import (
    BadRequest,
    ChatstreamError,
    InvalidOffset,
    NotFound,
    RateLimited,
    ServiceUnavailable,
)
from chatstream.models import Conversation, Message, Role, Status
from chatstream.ownership import Owner, aget_scope_owner
from chatstream.replylog import get_reply_log
from chatstream.replylog.base import ANSWER
from chatstream.serializers import message_payload

logger = logging.getLogger(__name__)

# Daphne refuses to send a message over 1 MiB (its websocket_max_message_size also
# bounds outgoing frames), and client libraries refuse them by default (websockets:
# 1 MiB). A reader far behind therefore catches up in deltas of at most this many
# code points (under 400 kB of JSON, whatever the text), and a ``done`` frame that
# would exceed MAX_FRAME_BYTES leaves the message's ``content`` out (null): the
# deltas carried every character of it already.
MAX_FRAME_CHARS = 65536
MAX_FRAME_BYTES = 1_000_000

# Close codes after a refused connection: 4000 + the HTTP API's status.
CLOSE_NOT_AUTHENTICATED = 4403
CLOSE_NOT_FOUND = 4404

_NO_CONVERSATION = "No such conversation."
_NO_REPLY = "No such reply."


def _encode(frame: Mapping[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def _uuid(value: Any, not_found: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        raise NotFound(not_found) from None


def _error_frame(error: ChatstreamError, **extra: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", **error.as_dict(), **extra}
    if isinstance(error, RateLimited):
        frame["retry_after"] = error.retry_after
    return frame


def _done_frame(reply_id: str, final: Mapping[str, Any], offset: int) -> str:
    frame: dict[str, Any] = {
        "type": "done",
        "message_id": reply_id,
        "status": final.get("status"),
        "offset": offset,
        "message": final.get("message"),
    }
    text = _encode(frame)
    if len(text) * 4 > MAX_FRAME_BYTES and len(text.encode()) > MAX_FRAME_BYTES:
        frame["message"] = {**frame["message"], "content": None}
        text = _encode(frame)
    return text


class ConversationConsumer(AsyncWebsocketConsumer):
    """``ws/conversations/<uuid>/``: send, stop and resume replies of one conversation.

    Needs ``scope["session"]`` and ``scope["user"]``: route it inside
    ``channels.auth.AuthMiddlewareStack`` (and ``AllowedHostsOriginValidator``).
    """

    # Replies and stop signals travel through the reply log: no channel layer
    # (with Redis, one would cost a channel and a polling receive per connection).
    channel_layer_alias = None  # type: ignore[assignment]  # channels: None means no layer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner: Owner | None = None
        self.conversation_id: uuid.UUID | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Also when the server cancels the connection without a disconnect message.
            await self._stop_readers()

    # --- the connection ---------------------------------------------------------------

    async def connect(self) -> None:
        """Accept, then refuse with an ``error`` frame if the conversation is not the caller's.

        Someone else's conversation and one that does not exist get the same
        frame and close code, as on HTTP: nothing hints that it exists.
        """
        try:
            self.owner = await aget_scope_owner(self.scope)
            raw_id = self.scope["url_route"]["kwargs"]["conversation_id"]
            self.conversation_id = (await self._conversation(_uuid(raw_id, _NO_CONVERSATION))).pk
        except ChatstreamError as error:
            await self.accept()
            await self._send_frame(_error_frame(error))
            close_code = CLOSE_NOT_FOUND if error.status == 404 else 4000 + error.status
            await self.close(code=close_code)
            return
        await self.accept()

    async def disconnect(self, code: int) -> None:
        """The client left: end this connection's reader; the generation goes on."""
        await self._stop_readers()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """One client frame; whatever goes wrong is answered by an ``error`` frame.

        Never raises: an exception here would end the connection and its reader.
        """
        if self.conversation_id is None:
            return  # refused in connect(); the close is on its way
        try:
            frame = self._parse(text_data)
            handlers = {
                "send": self._send,
                "edit": self._edit,
                "stop": self._stop,
                "resume": self._resume,
            }
            handler = handlers[frame["type"]]
            await handler(frame)
        except ChatstreamError as error:
            await self._send_frame(_error_frame(error))
        except Exception:
            logger.exception("WebSocket frame failed in conversation %s", self.conversation_id)
            await self._send_frame(
                {"type": "error", "code": "internal_error", "message": "The frame failed."}
            )

    @staticmethod
    def _parse(text_data: str | None) -> dict[str, Any]:
        if text_data is None:
            raise BadRequest("Frames must be JSON text, not binary.", code="invalid_frame")
        try:
            frame = json.loads(text_data)
        except ValueError:
            raise BadRequest("The frame is not valid JSON.", code="invalid_json") from None
        if not isinstance(frame, dict):
            raise BadRequest("The frame must be a JSON object.", code="invalid_frame")
        if frame.get("type") not in ("send", "edit", "stop", "resume"):
            raise BadRequest(
                f"Unknown frame type {str(frame.get('type'))[:40]!r}: "
                "expected 'send', 'edit', 'stop' or 'resume'.",
                code="unknown_type",
            )
        return frame

    # --- client frames ----------------------------------------------------------------

    async def _send(self, frame: Mapping[str, Any]) -> None:
        content = frame.get("content")
        if not isinstance(content, str):
            raise BadRequest("'content' must be a string.", code="invalid_content")
        assert self.owner is not None and self.conversation_id is not None
        conversation = await self._conversation(self.conversation_id)
        user_message, reply = await turns.astart_reply(self.owner, conversation, content)
        await self._follow_started(user_message, reply)

    async def _edit(self, frame: Mapping[str, Any]) -> None:
        """Ask the last question again, edited (``message_id``: the question's id)."""
        content = frame.get("content")
        if not isinstance(content, str):
            raise BadRequest("'content' must be a string.", code="invalid_content")
        assert self.owner is not None
        question = (
            await Message.objects.filter(
                self.owner.of("conversation__"),
                conversation_id=self._this,
                role=Role.USER,
                pk=_uuid(frame.get("message_id"), "No such question."),
            )
            .select_related("conversation__assistant")
            .afirst()
        )
        if question is None:
            raise NotFound("No such question.")
        user_message, reply = await turns.aedit(self.owner, question, content)
        await self._follow_started(user_message, reply)

    async def _follow_started(self, user_message: Message, reply: Message) -> None:
        started = {
            "type": "started",
            "user_message": message_payload(user_message),
            "assistant_message": message_payload(reply),
        }
        # After the previous reader's last frame (its ``done`` is never cut off).
        self._start_reader(str(reply.pk), 0, started=started, after=self._reader)

    async def _stop(self, frame: Mapping[str, Any]) -> None:
        """Stop the given reply, or the conversation's streaming one; idempotent, silent.

        The reader following it sends ``done``; a client following nothing resumes.
        """
        if "message_id" in frame:
            reply: Message | None = await self._reply(frame["message_id"])
        else:
            reply = await Message.objects.filter(
                conversation_id=self._this, status=Status.STREAMING
            ).afirst()
        if reply is None or reply.status != Status.STREAMING:
            return
        log, reply_id = get_reply_log(), str(reply.pk)
        if await log.is_alive(reply_id):
            await log.request_stop(reply_id)
        else:
            await recover(reply_id, log)

    async def _resume(self, frame: Mapping[str, Any]) -> None:
        reply = await self._reply(frame.get("message_id"))
        offset = frame.get("offset", 0)
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise InvalidOffset(f"The resume offset {str(offset)[:20]!r} is not an integer.")
        if offset < 0:
            raise InvalidOffset("The resume offset cannot be negative.")
        reply_id = str(reply.pk)
        length = None
        if reply.status == Status.STREAMING:
            length = await get_reply_log().length_reaching(reply_id, offset)
        if length is None:
            reply = await reading.finished(reply_id)
            length = len(reply.content) + len(reply.reasoning)
        if offset > length:
            raise InvalidOffset(f"The reply is only {length} characters long so far.")
        # The client asks to follow this reply now: the previous reader gives way.
        await self._stop_readers()
        self._start_reader(reply_id, offset)

    # --- database look-ups, scoped to the caller -------------------------------------------

    async def _conversation(self, conversation_id: uuid.UUID) -> Conversation:
        assert self.owner is not None
        conversation = (
            await Conversation.objects.select_related("assistant")
            .filter(self.owner.of(), pk=conversation_id)
            .afirst()
        )
        if conversation is None:
            raise NotFound(_NO_CONVERSATION)
        return conversation

    @property
    def _this(self) -> uuid.UUID:
        """The connection's conversation: connect() sets it before any frame is handled."""
        assert self.conversation_id is not None
        return self.conversation_id

    async def _reply(self, message_id: Any) -> Message:
        """An assistant reply of this connection's conversation, still the caller's."""
        assert self.owner is not None
        reply = await Message.objects.filter(
            self.owner.of("conversation__"),
            conversation_id=self._this,
            role=Role.ASSISTANT,
            pk=_uuid(message_id, _NO_REPLY),
        ).afirst()
        if reply is None:
            raise NotFound(_NO_REPLY)
        return reply

    # --- the reader -------------------------------------------------------------------

    def _start_reader(
        self,
        reply_id: str,
        offset: int,
        *,
        started: Mapping[str, Any] | None = None,
        after: asyncio.Task[None] | None = None,
    ) -> None:
        task = asyncio.get_running_loop().create_task(
            self._read(reply_id, offset, started, after), name=f"chatstream-ws-{reply_id}"
        )
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)
        self._reader = task

    async def _stop_readers(self) -> None:
        readers = list(self._readers)
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    async def _read(
        self,
        reply_id: str,
        offset: int,
        started: Mapping[str, Any] | None,
        after: asyncio.Task[None] | None,
    ) -> None:
        """Follow one reply to its ``done``; the only sender of its deltas."""
        if after is not None:
            await asyncio.wait({after})
        try:
            if started is not None:
                await self._send_frame(started)
            await self._follow(reply_id, offset)
        except ServiceUnavailable as error:
            # No done: the client resumes from its offset once the log is back.
            await self._send_quietly(_error_frame(error, message_id=reply_id))
        except OSError:
            pass  # the client is gone; its disconnect ends the consumer
        except Exception:
            logger.exception("WebSocket reader of reply %s failed", reply_id)
            await self._send_quietly(
                {
                    "type": "error",
                    "code": "internal_error",
                    "message": "Following the reply failed; resume it.",
                    "message_id": reply_id,
                }
            )

    async def _follow(self, reply_id: str, offset: int) -> None:
        async with contextlib.aclosing(reading.follow(reply_id, offset)) as items:
            async for item in items:
                if isinstance(item, reading.Delta):
                    await self._send_text(reply_id, item, item.end - len(item.text))
                elif isinstance(item, reading.Ending):
                    await self._send_ending(reply_id, item.final, item.end)

    async def _send_text(self, reply_id: str, delta: reading.Delta, offset: int) -> int:
        kind = "delta" if delta.kind == ANSWER else delta.kind  # "reasoning"
        text = delta.text
        for start in range(0, len(text), MAX_FRAME_CHARS):
            piece = text[start : start + MAX_FRAME_CHARS]
            offset += len(piece)
            await self._send_frame(
                {"type": kind, "message_id": reply_id, "offset": offset, "text": piece}
            )
        return offset

    async def _send_ending(self, reply_id: str, final: Mapping[str, Any], offset: int) -> None:
        error = final.get("error")
        if error:
            await self._send_frame({"type": "error", **error, "message_id": reply_id})
        await self._send_frame(_done_frame(reply_id, final, offset))

    async def _send_quietly(self, frame: Mapping[str, Any]) -> None:
        """A reader's last word: a client that has gone needs none."""
        with contextlib.suppress(OSError):
            await self._send_frame(frame)

    async def _send_frame(self, frame: Mapping[str, Any] | str) -> None:
        text = frame if isinstance(frame, str) else _encode(frame)
        async with self._send_lock:
            await self.send(text_data=text)
