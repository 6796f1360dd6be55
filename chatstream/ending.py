"""How a reply ends: one construct whose exit always ends it, and recovery of orphans.

``async with Ending(writer, row=..., ...) as ending`` wraps a generation. Its
exit, whatever happened inside (an upstream failure, a stop, a cancelled task, a
database that refuses the write, a row deleted meanwhile), writes the log's one
final record and releases the lease, so readers always get ``done`` and the
conversation is never left with a reply that looks alive. The row is written
first when the database answers promptly; otherwise readers get ``done`` from
what the generation knows, and the row's write is retried for a bounded time,
after which any recovery finalises it from the log's final record.

A writer that lost its lease (it stalled, and another worker recovered the
reply) writes nothing: one reply, one final record. The row's conditional UPDATE
(``WHERE status = 'streaming'``) succeeds exactly once whoever attempts it, so
``reply_finished`` fires once per reply.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from types import TracebackType
from typing import Any

from asgiref.sync import sync_to_async
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from chatstream import dbpool, metrics
from chatstream.compiled import CompiledUpdate
from chatstream.models import Conversation, Message, Status
from chatstream.replylog import ReplyLog, get_reply_log
from chatstream.replylog.base import ANSWER, REASONING, Part, ReplyWriter, wait_done
from chatstream.serializers import message_payload
from chatstream.signals import reply_finished

logger = logging.getLogger(__name__)

#: Seconds readers may wait for the row before ``done`` goes out from memory instead.
_ROW_WAIT = 1.0
_RETRY_FIRST, _RETRY_MOST = 0.5, 5.0  # seconds between two attempts at the row
#: Replies younger than this are being started, not orphaned: sweeps leave them be.
STARTING = timedelta(seconds=30)
_RECOVER_AT_ONCE = dbpool.POOL_SIZE
_STREAMING = CompiledUpdate(
    Message, lambda pk, status: Message.objects.filter(pk=pk, status=status), ["id", "status"]
)


def write_streaming(reply_id: str, fields: Mapping[str, Any]) -> int:
    """Writes ``fields`` to the reply's row if it still streams; 1 if it did, else 0."""
    return _STREAMING.update(fields, reply_id, Status.STREAMING)


@dataclass(frozen=True)
class Outcome:
    status: Status
    error_code: str = ""
    error_message: str = ""


def final_record(message: Message) -> dict[str, Any]:
    """The log's last record: what ``done`` (and ``error``) events say."""
    payload = message_payload(message)
    return {
        "status": message.status,
        "finish_reason": payload["finish_reason"],
        "usage": payload["usage"],
        "error": payload["error"],
        "message": payload,
        "layout": message.layout,  # for recovery: the order of the parts
    }


def text_fields(parts: tuple[Part, ...] | list[Part]) -> dict[str, Any]:
    """The row's text fields for a reply made of ``parts``, in their order."""
    layout = [[part.kind, len(part.text)] for part in parts]
    return {
        "content": "".join(part.text for part in parts if part.kind == ANSWER),
        "reasoning": "".join(part.text for part in parts if part.kind == REASONING),
        "layout": layout if any(kind == REASONING for kind, _ in layout) else None,
    }


def row_fields(final: Mapping[str, Any]) -> dict[str, Any]:
    """A final record as the row's fields: recovery writes these."""
    payload = final["message"]
    usage, error = payload.get("usage") or {}, payload.get("error") or {}
    cost = payload.get("cost") or {}
    finished = payload.get("finished_at")
    return {
        "content": payload.get("content") or "",
        "reasoning": payload.get("reasoning") or "",
        "layout": final.get("layout"),
        "status": payload["status"],
        "finish_reason": payload.get("finish_reason") or "",
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "reasoning_tokens": usage.get("reasoning_tokens"),
        "cached_tokens": usage.get("cached_tokens"),
        "usage_estimated": bool(usage.get("estimated")),
        "cost": Decimal(cost["amount"]) if cost.get("amount") else None,
        "cost_currency": cost.get("currency") or "",
        "ttft_ms": payload.get("ttft_ms"),
        "duration_ms": payload.get("duration_ms"),
        "error_code": error.get("code") or "",
        "error_message": error.get("message") or "",
        "finished_at": (parse_datetime(finished) if finished else None) or timezone.now(),
    }


def _finalise_row(
    reply_id: str, fields: Mapping[str, Any], row: Message | None = None
) -> tuple[Message | None, bool]:
    """Finalise the row unless someone already did; returns (message, whether we did).

    ``row``, the reply as it was created, spares reading the row back when we did:
    nothing but this write changes a streaming reply's other fields.
    """
    # The conversation's updated_at moved when the turn began: no second write here.
    won = write_streaming(reply_id, fields)
    if won and row is not None:
        message = finalised(row, fields)
        if reply_finished.has_listeners(Message) and not Message.conversation.is_cached(message):
            # Receivers get what a read-back gives them; nothing kept it while streaming.
            conversation = Conversation.objects.filter(pk=message.conversation_id).first()
            if conversation is not None:  # else deleted meanwhile, the reply with it
                message.conversation = conversation
        return message, True
    try:
        message = Message.objects.select_related("conversation").get(pk=reply_id)
    except Message.DoesNotExist:  # deleted meanwhile (its conversation, its owner)
        return None, False
    return message, bool(won)


def finalised(row: Message, fields: Mapping[str, Any]) -> Message:
    """A copy of ``row`` with its final ``fields``: the row as the final write leaves it."""
    message = copy.copy(row)
    for name, value in fields.items():
        setattr(message, name, value)
    return message


async def persist(
    reply_id: str, fields: Mapping[str, Any], row: Message | None = None
) -> tuple[Message | None, bool]:
    """One attempt at the row's final write, on the caller's thread-sensitive connection
    (the admin's sync views run it inside their transaction); raises what the database
    raises."""
    return await sync_to_async(_finalise_row)(reply_id, fields, row)


async def announce(message: Message) -> None:
    """Once per reply, by whoever finalised its row: the log line and ``reply_finished``."""
    line = {
        "reply": str(message.pk),
        "assistant": message.assistant_id,
        "model": message.model,
        "status": message.status,
        "finish_reason": message.finish_reason or None,
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "reasoning_tokens": message.reasoning_tokens,
        "cached_tokens": message.cached_tokens,
        "estimated": message.usage_estimated,
        "ttft_ms": message.ttft_ms,
        "duration_ms": message.duration_ms,
        "error": message.error_code or None,
    }
    # One line per reply, never its text: operators grep and parse these.
    logger.info("reply finished %s", json.dumps(line), extra={"chatstream": line})
    metrics.count_reply(message)
    for receiver, result in await reply_finished.asend_robust(sender=Message, message=message):
        if isinstance(result, Exception):
            logger.error("reply_finished receiver %r failed", receiver, exc_info=result)


class Ending:
    """The end of one reply, owned by its generation; see the module's docstring.

    The generation sets ``outcome`` and the row's final ``fields`` (text, usage,
    timings) before the block exits; a block left by an exception ends the reply
    ``interrupted`` (cancelled: a shutdown) or as an internal error.
    """

    def __init__(self, writer: ReplyWriter, *, row: Message, finalise_retry: float) -> None:
        self.writer = writer
        self.row = row  # the reply as it was created
        self.finalise_retry = finalise_retry
        self.outcome: Outcome | None = None
        self.fields: dict[str, Any] = {}

    async def __aenter__(self) -> Ending:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            self.outcome = Outcome(Status.INTERRUPTED)
        elif exc is not None:
            logger.error("Reply %s failed", self.writer.reply_id, exc_info=exc)
            self.outcome = Outcome(
                Status.ERROR, "internal_error", "The reply failed on the server."
            )
        outcome = self.outcome or Outcome(Status.INTERRUPTED)
        self.fields.update(
            status=outcome.status,
            error_code=outcome.error_code,
            error_message=outcome.error_message,
            finished_at=timezone.now(),
        )
        await self._end(self.fields)

    async def _end(self, fields: dict[str, Any]) -> None:
        writer = self.writer
        if not await writer.holds_lease():
            await writer.close(None)  # fenced out: whoever took it over ends it
            return
        attempt = asyncio.ensure_future(self._write(fields))
        written = await wait_done(attempt, _ROW_WAIT) and attempt.exception() is None
        message, won = attempt.result() if written else (None, False)
        try:
            # Without the database's word, done tells the row as it will be.
            await writer.close(final_record(message or finalised(self.row, fields)))
        finally:
            if not written:
                message, won = await self._retry(attempt, fields)
        if won and message is not None:
            await announce(message)

    async def _write(self, fields: dict[str, Any]) -> tuple[Message | None, bool]:
        # On the pool: a generation's context then needs no thread of its own.
        return await dbpool.run(_finalise_row, self.writer.reply_id, fields, self.row)

    async def _retry(
        self, attempt: asyncio.Future[tuple[Message | None, bool]], fields: dict[str, Any]
    ) -> tuple[Message | None, bool]:
        """Retry the row's write with backoff for ``finalise_retry`` seconds.

        Readers have their ``done`` already. Giving up leaves the row ``streaming``
        and the log's final record holding everything: any recovery then writes it.
        """
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + self.finalise_retry, _RETRY_FIRST
        reply_id = self.writer.reply_id
        while True:
            try:
                return await attempt
            except Exception as exc:
                if loop.time() + delay > deadline:
                    logger.error(
                        "Gave up finalising reply %s's row (%s); its log keeps the ending "
                        "for recovery.",
                        reply_id,
                        exc,
                    )
                    return None, False
                logger.warning("Finalising reply %s failed (%s); retrying.", reply_id, exc)
                metrics.FINALISE_RETRIES.inc()
            await asyncio.sleep(delay)
            delay = min(2 * delay, _RETRY_MOST)
            attempt = asyncio.ensure_future(self._write(fields))


async def recover(
    reply_id: str, log: ReplyLog | None = None, places: asyncio.Semaphore | None = None
) -> Message | None:
    """Finalise a reply whose generation is gone; ``None`` while a live one owns it.

    A generation that ended but could not write its row left everything in its
    log's final record: that is written. Otherwise the reply was cut short (its
    process died): ``interrupted``, with all the text its log holds. ``places``
    bounds how many recoveries use the database at once (the claims do not wait).
    """
    log = log or get_reply_log()
    writer = await log.claim(reply_id)
    if writer is None:
        return None
    final: Mapping[str, Any] | None = None
    try:
        read = await log.read(reply_id, 0, 0)
        if read is not None and read.final is not None and read.final.get("message"):
            final = read.final
            fields = row_fields(read.final)
        else:
            fields = {"status": Status.INTERRUPTED, "finished_at": timezone.now()}
            if read is not None and read.parts:
                fields.update(text_fields(read.parts))
        if places is None:
            message, won = await persist(reply_id, fields)
        else:  # many at once: on the pool's few threads, not one after another
            async with places:
                message, won = await dbpool.run(_finalise_row, reply_id, fields)
    except BaseException:
        await writer.close(None)
        raise
    await writer.close(None if final is not None or message is None else final_record(message))
    if won and message is not None:
        await announce(message)
    return message


async def recover_all(reply_ids: list[str], log: ReplyLog | None = None) -> int:
    """Recover many at once; returns how many were finalised (by us or just before)."""
    log = log or get_reply_log()
    places = asyncio.Semaphore(_RECOVER_AT_ONCE)

    async def one(reply_id: str) -> bool:
        try:
            return await recover(reply_id, log, places) is not None
        except Exception as exc:
            logger.warning("Could not recover reply %s: %s", reply_id, exc)
            return False

    return sum(await asyncio.gather(*(one(reply_id) for reply_id in reply_ids)))


def orphan_candidates() -> list[str]:
    """Streaming replies old enough not to be starting right now."""
    rows = Message.objects.filter(
        status=Status.STREAMING, created_at__lt=timezone.now() - STARTING
    ).values_list("pk", flat=True)
    return [str(pk) for pk in rows]
