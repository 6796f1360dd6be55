"""The reply log contract: where a generation writes a reply and its readers pull it.

A reply's text only grows. It is a sequence of typed parts (``answer`` and
``reasoning``) and offsets count the code points of all of them, in the order the
log received them (Python ``len``): resuming from offset N yields exactly what
came after N, of both kinds, however the appends were merged. The last record,
written once, carries the persisted message so that readers need no database
connection to send ``done``. Stop requests travel through the log too, so they
reach the generation's process wherever it runs.

The owner writes through a ``ReplyWriter``, which holds the reply's lease. A
lease carries a fencing token: once anyone else has taken the reply over (its
owner seemed dead, and it was recovered), the old writer can append nothing and
write no final record, and learns so at its next append or heartbeat.
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
import functools
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:
    from chatstream.replylog.buffer import ReplyBuffer

#: This process, as operators see it.
WORKER = f"{socket.gethostname()}:{os.getpid()}"

PartKind = Literal["answer", "reasoning"]
ANSWER: PartKind = "answer"
REASONING: PartKind = "reasoning"


class Part(NamedTuple):
    kind: PartKind
    text: str


@dataclass(frozen=True)
class LogRead:
    """What a reader gets: the ``parts`` after its offset, ending at ``end``.

    ``final`` is the finish record, given only once ``end`` is the final length.
    """

    parts: tuple[Part, ...]
    end: int
    final: Mapping[str, Any] | None = None

    @property
    def text(self) -> str:
        """All the text read, of either kind."""
        return "".join(part.text for part in self.parts)


def settle(future: asyncio.Future[None], _: object = None) -> None:
    """Complete ``future`` unless something did already (as a done-callback too).

    A reply's stop is such a future rather than an ``asyncio.Event``: it is kept
    for as long as the reply streams, and an Event's waiter deque is 600 bytes.
    """
    if not future.done():
        future.set_result(None)


def cancel_requested() -> bool:
    """Whether this task was asked to stop, though nothing raised it.

    Under Python 3.11, ``asyncio.wait_for`` (which redis-py uses inside a command)
    returns a result that arrived together with a cancel and drops the cancel: a
    loop that awaits the log checks this as well, or once cancelled it runs on.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


#: What ``settle`` runs in: it reads no context variable.
_NO_CONTEXT = contextvars.Context()


async def wait_done(future: asyncio.Future[Any], timeout: float) -> bool:
    """Whether ``future`` completed within ``timeout``; without ``wait_for``'s task per call."""
    if future.done() or timeout <= 0:
        return future.done()
    loop = future.get_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    # A waiting reader keeps these for as long as the model is silent: a partial and
    # one shared context, not a closure and a copy of the context per callback.
    wake = functools.partial(settle, waiter)
    future.add_done_callback(wake, context=_NO_CONTEXT)
    timer = loop.call_later(timeout, wake, context=_NO_CONTEXT)
    try:
        await waiter
    finally:
        timer.cancel()
        future.remove_done_callback(wake)
    return future.done()


class ReplyLog(abc.ABC):
    def __init__(
        self, *, location: str = "", options: Mapping[str, Any] | None = None, ttl: float = 600
    ) -> None:
        self.location = location
        self.options = dict(options or {})
        self.ttl = ttl

    @abc.abstractmethod
    async def open(self, reply_id: str, owner: str = "") -> ReplyWriter:
        """Start an empty log owned by this process, and take its lease; before the 201.

        ``owner`` is the key of whoever asked for the reply (``Owner.key``): a
        stream of theirs can then start without asking the database.
        """

    @abc.abstractmethod
    async def claim(self, reply_id: str) -> ReplyWriter | None:
        """Take over a reply whose owner is gone, to finalise it; ``None`` while it lives.

        Taking the lease fences the former owner out. The writer returned appends
        nothing; its ``close()`` writes the final record unless the log has one.
        """

    @abc.abstractmethod
    async def read(self, reply_id: str, offset: int, timeout: float) -> LogRead | None:
        """Text after ``offset``, waiting up to ``timeout`` for some if there is none yet.

        Returns an empty ``LogRead`` on timeout, and ``None`` when there is no log
        (never opened here, expired, or its owner died): the database then has the word.
        """

    @abc.abstractmethod
    async def length(self, reply_id: str) -> int | None:
        """The text's current length, or ``None`` without a log."""

    async def length_reaching(self, reply_id: str, offset: int) -> int | None:
        """``length()``, for a reader about to resume from ``offset``.

        A log that shows other workers its text later than its owner's own readers
        (the Redis log batches) waits here for the text to reach ``offset``.
        """
        return await self.length(reply_id)

    @abc.abstractmethod
    async def owner(self, reply_id: str) -> str | None:
        """The ``owner`` the log was opened for, or ``None`` without a log."""

    @abc.abstractmethod
    async def request_stop(self, reply_id: str) -> None:
        """Ask the owning generation to stop, wherever it runs. Idempotent."""

    @abc.abstractmethod
    async def is_alive(self, reply_id: str) -> bool:
        """Whether a live generation still owns this reply (false once its owner died)."""

    @abc.abstractmethod
    async def reader_joined(self, reply_id: str) -> None:
        """Count a reader in (any worker); the ``cancel`` disconnect policy watches the count."""

    @abc.abstractmethod
    async def reader_left(self, reply_id: str) -> None:
        """Count a reader out; called in the reader's ``finally``."""

    @abc.abstractmethod
    async def readers(self, reply_id: str) -> int:
        """How many readers follow the reply now, on every worker."""

    async def ping(self) -> None:  # noqa: B027 (optional hook)
        """Raise ``ReplyLogUnavailable`` when the log cannot be reached (health checks)."""

    async def worker(self, reply_id: str) -> str | None:
        """Which worker ("host:pid") owns a live reply, for operators; ``None`` if none."""
        return WORKER if await self.is_alive(reply_id) else None

    async def aclose(self) -> None:  # noqa: B027 (optional hook)
        """Release connections."""


class ReplyWriter(abc.ABC):
    """The owner's side of one reply's log, from ``open()`` (or ``claim()``) to ``close()``.

    ``buffer`` holds the whole reply as written: the generation reads its text
    from here rather than keeping a copy of its own.
    """

    def __init__(self, reply_id: str, buffer: ReplyBuffer) -> None:
        self.reply_id = reply_id
        self.buffer = buffer
        #: True once the lease was lost to someone else: stop, and write nothing more.
        self.lost = False

    @abc.abstractmethod
    async def append(self, text: str, kind: PartKind = ANSWER) -> None:
        """Add text; wakes readers. Raises ``LeaseLost`` once the lease is someone else's."""

    @abc.abstractmethod
    async def close(self, final: Mapping[str, Any] | None) -> bool:
        """Write the final record (if given and the log has none) and release the lease.

        Guaranteed to be called once, whatever ended the reply; the log then
        expires after its ``ttl``. Returns whether the final record was written
        by this call; never raises for the log's own failures (it logs them).
        """

    @abc.abstractmethod
    def stop_signal(self) -> asyncio.Future[None]:
        """A future done once a stop was requested or the lease was lost.

        Its owner's alone, to cancel once the reply ends. Kept for as long as the reply
        streams: a future, not a task, where the log can (no task and frames per reply).
        """

    async def holds_lease(self) -> bool:
        """Whether no one has taken the reply over; asked right before the row's final write."""
        return not self.lost
