"""The in-process reply log: the embedded default (runserver, tests, one worker).

Only the process that runs a generation can read it, so several workers need
the Redis log. With one process nobody else can take a reply over: a lease is
the entry itself, and a claim succeeds only once the entry has ended or is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from chatstream.exceptions import LeaseLost
from chatstream.replylog.base import ANSWER, LogRead, PartKind, ReplyLog, ReplyWriter, settle
from chatstream.replylog.buffer import ReplyBuffer


class _Entry(ReplyBuffer):
    __slots__ = ("stop", "readers", "owner")

    def __init__(self, owner: str) -> None:
        super().__init__()
        self.stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.readers = 0
        self.owner = owner


class _Writer(ReplyWriter):
    def __init__(self, log: MemoryReplyLog, reply_id: str, entry: _Entry, *, claim: bool) -> None:
        super().__init__(reply_id, entry)
        self.log, self.entry, self.claim = log, entry, claim

    async def append(self, text: str, kind: PartKind = ANSWER) -> None:
        if self.claim or self.log._entries.get(self.reply_id) is not self.entry:
            raise LeaseLost()
        if text:
            self.entry.append(text, kind)

    async def close(self, final: Mapping[str, Any] | None) -> bool:
        entry = self.entry
        if entry.final is not None or final is None:
            return False
        entry.finish(final)
        loop = asyncio.get_running_loop()
        loop.call_later(self.log.ttl, self.log._expire, self.reply_id, entry)
        return True

    def stop_signal(self) -> asyncio.Future[None]:
        return self.entry.stop


class MemoryReplyLog(ReplyLog):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._entries: dict[str, _Entry] = {}

    async def open(self, reply_id: str, owner: str = "") -> ReplyWriter:
        entry = self._entries[reply_id] = _Entry(owner)
        return _Writer(self, reply_id, entry, claim=False)

    async def claim(self, reply_id: str) -> ReplyWriter | None:
        entry = self._entries.get(reply_id)
        if entry is not None and entry.final is None:
            return None
        return _Writer(self, reply_id, entry or _Entry(""), claim=True)

    def _expire(self, reply_id: str, entry: _Entry) -> None:
        if self._entries.get(reply_id) is entry:
            del self._entries[reply_id]

    async def read(self, reply_id: str, offset: int, timeout: float) -> LogRead | None:
        entry = self._entries.get(reply_id)
        if entry is None:
            return None
        return await entry.read(offset, timeout)

    async def length(self, reply_id: str) -> int | None:
        entry = self._entries.get(reply_id)
        return None if entry is None else entry.length

    async def owner(self, reply_id: str) -> str | None:
        entry = self._entries.get(reply_id)
        return None if entry is None else entry.owner

    async def request_stop(self, reply_id: str) -> None:
        entry = self._entries.get(reply_id)
        if entry is not None:
            settle(entry.stop)

    async def reader_joined(self, reply_id: str) -> None:
        if (entry := self._entries.get(reply_id)) is not None:
            entry.readers += 1

    async def reader_left(self, reply_id: str) -> None:
        if (entry := self._entries.get(reply_id)) is not None:
            entry.readers -= 1

    async def readers(self, reply_id: str) -> int:
        entry = self._entries.get(reply_id)
        return 0 if entry is None else entry.readers

    async def is_alive(self, reply_id: str) -> bool:
        entry = self._entries.get(reply_id)
        return entry is not None and entry.final is None
