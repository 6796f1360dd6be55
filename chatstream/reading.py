"""One reader of one reply, whatever the transport (SSE response or WebSocket consumer).

A reader pulls: it asks the log for everything after its offset, hands that over
as one ``Delta``, and asks again only when the transport has sent it. Text that
comes sooner than the frame interval after the last send waits out the rest of
it, so a fast model and a slow client make fewer, larger deltas, while a paced
model costs one wake-up per token at light load; no send ever overlaps another.
The interval is ``FLUSH_INTERVAL``, longer when the process is loaded
(``chatstream.pacing``). When the log is gone
(expired, or its owner died) the database has the word, and the reader ends from
there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

from chatstream import metrics, pacing
from chatstream.conf import get_settings
from chatstream.ending import final_record, recover
from chatstream.exceptions import ReplyLogUnavailable
from chatstream.models import Message, Status
from chatstream.replylog import get_reply_log
from chatstream.replylog.base import ANSWER, LogRead, Part, PartKind, cancel_requested


@dataclass(frozen=True)
class Delta:
    text: str
    end: int  # the reply's length after ``text``: the SSE id, the WebSocket offset
    kind: PartKind = ANSWER


@dataclass(frozen=True)
class Ending:
    final: Mapping[str, Any]  # the log's last record: status, error, message, ...
    end: int


#: Nothing happened for ``KEEPALIVE_INTERVAL`` seconds (SSE sends a comment).
SILENCE = None

Item = Delta | Ending | None


async def finished(reply_id: str) -> Message:
    """The reply once its log is gone: finalised by its generation, or recovered now."""
    message = await Message.objects.aget(pk=reply_id)
    if message.status == Status.STREAMING:
        message = await recover(reply_id) or message
    return message


def stored_parts(message: Message) -> list[Part]:
    """A stored reply's parts in the order they were streamed."""
    if not message.layout:
        return [Part(ANSWER, message.content)] if message.content else []
    texts = {ANSWER: message.content, "reasoning": message.reasoning}
    taken = dict.fromkeys(texts, 0)
    parts = []
    for kind, length in message.layout:
        parts.append(Part(kind, texts[kind][taken[kind] : taken[kind] + length]))
        taken[kind] += length
    return parts


def rest_of(message: Message, offset: int) -> list[Delta | Ending]:
    """A finished reply from the database: exactly the parts after ``offset``, then the end."""
    items: list[Delta | Ending] = []
    end = 0
    for part in stored_parts(message):
        start, end = end, end + len(part.text)
        if end > offset:
            items.append(Delta(part.text[max(0, offset - start) :], end, part.kind))
    return [*items, Ending(final_record(message), end)]


async def follow(reply_id: str, offset: int) -> AsyncGenerator[Item, None]:
    """Everything after ``offset`` until the reply's ``Ending``.

    Raises ``ReplyLogUnavailable`` when the log cannot be reached: the client
    should resume from its offset later. Under the ``cancel`` disconnect policy the
    reader is counted in the log while it follows (the reply stops when none is left);
    under ``continue`` nothing reads the count, so it is not kept.
    """
    settings, log = get_settings(), get_reply_log()
    least, most = settings.flush_interval, settings.flush_interval_max
    clock = asyncio.get_running_loop().time
    joined, sent_at = False, -max(least, most)
    sent_any = False  # a gap is measured from this reader's previous frame
    metrics.READERS_LIVE.inc()
    try:
        if settings.disconnect_policy == "cancel":
            with contextlib.suppress(ReplyLogUnavailable):  # the first read reports it
                await log.reader_joined(reply_id)
                joined = True
        with pacing.watched() as load:
            while True:
                if cancel_requested():  # a read may have returned through the cancel
                    raise asyncio.CancelledError()
                read = await log.read(reply_id, offset, settings.keepalive_interval)
                pause = sent_at + load.interval(least, most) - clock()
                if read is not None and read.parts and read.final is None and pause > 0:
                    # Let deltas gather: a slow client then gets fewer, larger frames.
                    await asyncio.sleep(pause)
                    more = await log.read(reply_id, read.end, 0)
                    if more is not None:
                        read = LogRead(_joined(read.parts, more.parts), more.end, more.final)
                silent = read is not None and not read.parts and read.final is None
                if silent and not await log.is_alive(reply_id):
                    read = None  # its owner died without writing a final record
                if read is None:
                    for item in rest_of(await finished(reply_id), offset):
                        yield item
                    return
                if read.parts:
                    for part in read.parts:
                        offset += len(part.text)
                        yield Delta(part.text, offset, part.kind)
                    if sent_any:
                        metrics.FRAME_GAP.observe(clock() - sent_at)
                    sent_at, sent_any = clock(), True
                if read.final is not None:
                    yield Ending(read.final, offset)
                    return
                if not read.parts:
                    yield SILENCE
    finally:
        metrics.READERS_LIVE.dec()
        if joined:
            with contextlib.suppress(ReplyLogUnavailable):
                await log.reader_left(reply_id)


def _joined(first: tuple[Part, ...], then: tuple[Part, ...]) -> tuple[Part, ...]:
    if first and then and first[-1].kind == then[0].kind:
        return (*first[:-1], Part(then[0].kind, first[-1].text + then[0].text), *then[1:])
    return first + then
