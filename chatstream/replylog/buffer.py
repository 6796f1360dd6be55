"""A reply's parts in this process's memory, and the wake-up of its local readers.

The in-process log keeps every reply in one; the Redis log keeps the replies its
process generates in one too, so readers on the owning worker never wait on Redis.
Memory is bounded by the text: appends are kept as blocks merged as they
accumulate (adjacent blocks of one kind only), so a reply of many tiny deltas
does not cost an object per token. A finished reply stays for the log's TTL,
read or not, and its final record carries the persisted message, text and all:
``finish()`` then keeps the text once, one block per run, shared with that record.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Mapping
from typing import Any

from chatstream.replylog.base import ANSWER, REASONING, LogRead, Part, PartKind, wait_done

_MERGE_EVERY = 64


class ReplyBuffer:
    __slots__ = ("blocks", "kinds", "ends", "sealed", "final", "changed")

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.kinds: list[PartKind] = []
        self.ends: list[int] = []  # ends[i]: the text's length after blocks[i]
        self.sealed = 0  # blocks before this index are merged already
        self.final: Mapping[str, Any] | None = None
        self.changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def length(self) -> int:
        return self.ends[-1] if self.ends else 0

    def append(self, text: str, kind: PartKind = ANSWER) -> None:
        self.blocks.append(text)
        self.kinds.append(kind)
        self.ends.append(self.length + len(text))
        if len(self.blocks) - self.sealed >= _MERGE_EVERY:
            self._merge()
        self._wake()

    def _merge(self) -> None:
        parts = _runs(zip(self.kinds[self.sealed :], self.blocks[self.sealed :], strict=True))
        ends, end = [], self.ends[self.sealed - 1] if self.sealed else 0
        for part in parts:
            end += len(part.text)
            ends.append(end)
        self.blocks[self.sealed :] = [part.text for part in parts]
        self.kinds[self.sealed :] = [part.kind for part in parts]
        self.ends[self.sealed :] = ends
        self.sealed = len(self.blocks)

    def finish(self, final: Mapping[str, Any]) -> None:
        """Keep ``final`` and wake the readers; the text is kept once from here on."""
        self.sealed = 0
        if self.blocks:
            self._merge()  # one block per run of a kind
        self.final = _sharing(final, self.kinds, self.blocks)
        self._wake()

    def after(self, offset: int) -> tuple[Part, ...]:
        """The parts after ``offset``, adjacent ones of a kind merged."""
        i = bisect.bisect_right(self.ends, offset)
        if i >= len(self.blocks):
            return ()
        start = self.ends[i - 1] if i else 0
        first = Part(self.kinds[i], self.blocks[i][offset - start :])
        return tuple(_runs([first, *zip(self.kinds[i + 1 :], self.blocks[i + 1 :], strict=True)]))

    def text(self, kind: PartKind = ANSWER) -> str:
        """All the text of one kind."""
        return "".join(b for k, b in zip(self.kinds, self.blocks, strict=True) if k == kind)

    def layout(self) -> list[list[Any]] | None:
        """The order of the parts as ``[[kind, length], ...]``; ``None`` for answer alone."""
        if REASONING not in self.kinds:
            return None
        return [[part.kind, len(part.text)] for part in self.after(0)]

    async def read(self, offset: int, timeout: float) -> LogRead:
        """Parts after ``offset``, waiting up to ``timeout`` when there are none yet."""
        waits = offset >= self.length and self.final is None
        if waits and not await wait_done(self.changed, timeout):
            return LogRead((), offset)
        return LogRead(self.after(offset), self.length, self.final)

    def _wake(self) -> None:
        self.changed.set_result(None)
        self.changed = self.changed.get_loop().create_future()


_MESSAGE_TEXT: dict[PartKind, str] = {ANSWER: "content", REASONING: "reasoning"}


def _sharing(
    final: Mapping[str, Any], kinds: list[PartKind], blocks: list[str]
) -> Mapping[str, Any]:
    """``final`` with its message's texts replaced by the equal blocks of ours.

    The record's own strings are dropped rather than ours: they went to the
    database, and a driver may have cached a UTF-8 copy inside them (sqlite3 does).
    """
    message = final.get("message")
    if not isinstance(message, Mapping):
        return final
    shared = {}
    for kind, name in _MESSAGE_TEXT.items():
        runs = [block for k, block in zip(kinds, blocks, strict=True) if k == kind]
        if len(runs) == 1 and message.get(name) == runs[0]:
            shared[name] = runs[0]
    return {**final, "message": {**message, **shared}} if shared else final


def _runs(pieces: Any) -> list[Part]:
    """``(kind, text)`` pieces as parts, adjacent pieces of one kind joined, empty ones dropped."""
    runs: list[tuple[PartKind, list[str]]] = []
    for kind, text in pieces:
        if not text:
            continue
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(text)  # joined once below: no quadratic concatenation
        else:
            runs.append((kind, [text]))
    return [Part(kind, "".join(texts)) for kind, texts in runs]
