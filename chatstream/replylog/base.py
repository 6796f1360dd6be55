"""The reply log contract: where a generation writes a reply and its readers pull it.

A reply's text only grows. Readers ask for "everything after my offset" (offsets
are lengths in code points, Python ``len``), so resuming from offset N yields
exactly ``text[N:]`` however the appends were merged. The last record, written
once by ``finish()``, carries the persisted message so that readers need no
database connection to send ``done``. Stop requests travel through the log too,
so they reach the generation's process wherever it runs.
"""

from __future__ import annotations

import abc
import asyncio
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: This process, as operators see it.
WORKER = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class LogRead:
    """What a reader gets: ``text`` after its offset, ending at ``end``.

    ``final`` is the finish record, given only once ``end`` is the final length.
    """

    text: str
    end: int
    final: Mapping[str, Any] | None = None


async def wait_done(future: asyncio.Future[None], timeout: float) -> bool:
    """Whether ``future`` completed within ``timeout``; without ``wait_for``'s task per call."""
    if future.done() or timeout <= 0:
        return future.done()
    loop = future.get_loop()
    waiter = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    future.add_done_callback(wake)
    timer = loop.call_later(timeout, wake)
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
    async def open(self, reply_id: str, owner: str = "") -> None:
        """Start an empty log owned by this process; called before the 201 is sent.

        ``owner`` is the key of whoever asked for the reply (``Owner.key``): a
        stream of theirs can then start without asking the database.
        """

    @abc.abstractmethod
    async def append(self, reply_id: str, text: str) -> None:
        """Add text; wakes readers. Called only by the owning generation."""

    @abc.abstractmethod
    async def finish(self, reply_id: str, final: Mapping[str, Any]) -> None:
        """Write the last record; the log then expires after ``ttl`` seconds."""

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
    async def wait_stop(self, reply_id: str) -> None:
        """Return once a stop was requested. Run by the owner, cancelled when it ends."""

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
