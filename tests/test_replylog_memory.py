from __future__ import annotations

import pytest

from chatstream.replylog.memory import MemoryReplyLog
from tests.replylog_contract import ReplyLogContract


class TestMemoryReplyLog(ReplyLogContract):
    @pytest.fixture
    def log(self) -> MemoryReplyLog:
        return MemoryReplyLog(ttl=60)

    @pytest.fixture
    def short_ttl_log(self) -> MemoryReplyLog:
        return MemoryReplyLog(ttl=0.05)


async def test_many_tiny_appends_are_kept_as_merged_blocks() -> None:
    log = MemoryReplyLog()
    writer = await log.open("r")
    for _ in range(10_000):
        await writer.append("ab")
    assert len(log._entries["r"].blocks) < 10_000 / 32
