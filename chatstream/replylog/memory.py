"""The in-process reply log: the embedded default (runserver, tests, one worker).

Only the process that runs a generation can read it, so several workers need
the Redis log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from chatstream.replylog.base import LogRead, ReplyLog
from chatstream.replylog.buffer import ReplyBuffer


class _Entry(ReplyBuffer):
    __slots__ = ("stop", "readers", "owner")

    def __init__(self, owner: str) -> None:
        super().__init__()
        self.stop = asyncio.Event()
        self.readers = 0
        self.owner = owner


class MemoryReplyLog(ReplyLog):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._entries: dict[str, _Entry] = {}

    async def open(self, reply_id: str, owner: str = "") -> None:
        self._entries[reply_id] = _Entry(owner)

    async def append(self, reply_id: str, text: str) -> None:
        if text:
            self._entries[reply_id].append(text)

    async def finish(self, reply_id: str, final: Mapping[str, Any]) -> None:
        entry = self._entries.get(reply_id)
        if entry is None:
            return
        entry.finish(final)
        asyncio.get_running_loop().call_later(self.ttl, self._expire, reply_id, entry)

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
            entry.stop.set()

    async def wait_stop(self, reply_id: str) -> None:
        await self._entries[reply_id].stop.wait()

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
