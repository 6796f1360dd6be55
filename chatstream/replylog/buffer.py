"""A reply's text in this process's memory, and the wake-up of its local readers.

The in-process log keeps every reply in one; the Redis log keeps the replies its
process generates in one too, so readers on the owning worker never wait on Redis.
Memory is bounded by the text: appends are kept as blocks merged as they
accumulate, so a reply of many tiny deltas does not cost an object per token.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Mapping
from typing import Any

from chatstream.replylog.base import LogRead, wait_done

_MERGE_EVERY = 64


class ReplyBuffer:
    __slots__ = ("blocks", "ends", "sealed", "final", "changed")

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.ends: list[int] = []  # ends[i]: the text's length after blocks[i]
        self.sealed = 0  # blocks before this index are merged already
        self.final: Mapping[str, Any] | None = None
        self.changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

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

    def finish(self, final: Mapping[str, Any]) -> None:
        self.final = final
        self._wake()

    def after(self, offset: int) -> str:
        i = bisect.bisect_right(self.ends, offset)
        if i >= len(self.blocks):
            return ""
        start = self.ends[i - 1] if i else 0
        return self.blocks[i][offset - start :] + "".join(self.blocks[i + 1 :])

    async def read(self, offset: int, timeout: float) -> LogRead:
        """Text after ``offset``, waiting up to ``timeout`` when there is none yet."""
        waits = offset >= self.length and self.final is None
        if waits and not await wait_done(self.changed, timeout):
            return LogRead("", offset)
        return LogRead(self.after(offset), self.length, self.final)

    def _wake(self) -> None:
        self.changed.set_result(None)
        self.changed = self.changed.get_loop().create_future()
