"""The in-process reply log: the embedded default (runserver, tests, one worker).

Only the process that runs a generation can read it, so several workers need
the Redis log. Memory per reply is bounded by its text: appends are kept as
blocks that are merged as they accumulate, so a reply of many tiny deltas does
not cost an object per token.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Mapping
from typing import Any

from chatstream.replylog.base import LogRead, ReplyLog, wait_done

_MERGE_EVERY = 64


class _Entry:
    __slots__ = ("blocks", "ends", "sealed", "final", "changed", "stop", "readers")

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.ends: list[int] = []  # ends[i]: the text's length after blocks[i]
        self.sealed = 0  # blocks before this index are merged already
        self.final: Mapping[str, Any] | None = None
        self.changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.stop = asyncio.Event()
        self.readers = 0

    @property
    def length(self) -> int:
        return self.ends[-1] if self.ends else 0

    def append(self, text: str) -> None:
        self.blocks.append(text)
        self.ends.append(self.length + len(text))
        if len(self.blocks) - self.sealed >= _MERGE_EVERY:
            self.blocks[self.sealed :] = ["".join(self.blocks[self.sealed :])]
            self.ends[self.sealed :] = [self.ends[-1]]
            self.sealed += 1
        self._wake()

    def after(self, offset: int) -> str:
        i = bisect.bisect_right(self.ends, offset)
        if i >= len(self.blocks):
            return ""
        start = self.ends[i - 1] if i else 0
        return self.blocks[i][offset - start :] + "".join(self.blocks[i + 1 :])

    def _wake(self) -> None:
        self.changed.set_result(None)
        self.changed = self.changed.get_loop().create_future()


class MemoryReplyLog(ReplyLog):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._entries: dict[str, _Entry] = {}

    async def open(self, reply_id: str) -> None:
        self._entries[reply_id] = _Entry()

    async def append(self, reply_id: str, text: str) -> None:
        if text:
            self._entries[reply_id].append(text)

    async def finish(self, reply_id: str, final: Mapping[str, Any]) -> None:
        entry = self._entries.get(reply_id)
        if entry is None:
            return
        entry.final = final
        entry._wake()
        asyncio.get_running_loop().call_later(self.ttl, self._expire, reply_id, entry)

    def _expire(self, reply_id: str, entry: _Entry) -> None:
        if self._entries.get(reply_id) is entry:
            del self._entries[reply_id]

    async def read(self, reply_id: str, offset: int, timeout: float) -> LogRead | None:
        entry = self._entries.get(reply_id)
        if entry is None:
            return None
        if (
            offset >= entry.length
            and entry.final is None
            and not await wait_done(entry.changed, timeout)
        ):
            return LogRead("", offset)
        length = entry.length
        return LogRead(entry.after(offset), length, entry.final)

    async def length(self, reply_id: str) -> int | None:
        entry = self._entries.get(reply_id)
        return None if entry is None else entry.length

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
