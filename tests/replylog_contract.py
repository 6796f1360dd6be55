"""The ReplyLog contract, run against every implementation (memory, Redis)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from chatstream.replylog.base import WORKER, ReplyLog


def new_id() -> str:
    return str(uuid.uuid4())


async def settled(log: ReplyLog, reply: str, length: int) -> None:
    """Appends may be batched: wait (boundedly) until ``length`` code points are visible."""
    for _ in range(500):
        if await log.length(reply) == length:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"the log never reached length {length}")


class ReplyLogContract:
    """Subclasses provide a ``log`` fixture (async) giving a fresh implementation."""

    async def test_reads_yield_exactly_the_text_after_the_offset(self, log: ReplyLog) -> None:
        reply = new_id()
        await log.open(reply)
        pieces = ["Hé", "llo", " 世界", " 👩‍👩‍👧", "!"]
        for piece in pieces:
            await log.append(reply, piece)
        full = "".join(pieces)
        await settled(log, reply, len(full))
        for offset in range(len(full) + 1):
            read = await log.read(reply, offset, timeout=0.01)
            assert read is not None
            assert (read.text, read.end) == (full[offset:], len(full))

    async def test_many_small_appends_read_back_whole(self, log: ReplyLog) -> None:
        reply = new_id()
        await log.open(reply)
        tokens = [f"{i}," for i in range(500)]
        for token in tokens:
            await log.append(reply, token)
        full = "".join(tokens)
        await settled(log, reply, len(full))
        for offset in (0, 1, 137, 1000, len(full) - 1):
            read = await log.read(reply, offset, timeout=0.01)
            assert read is not None and read.text == full[offset:]

    async def test_read_waits_for_new_text(self, log: ReplyLog) -> None:
        reply = new_id()
        await log.open(reply)
        waiting = asyncio.ensure_future(log.read(reply, 0, timeout=10))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await log.append(reply, "late")
        read = await asyncio.wait_for(waiting, 5)
        assert (read.text, read.end, read.final) == ("late", 4, None)

    async def test_read_times_out_empty(self, log: ReplyLog) -> None:
        reply = new_id()
        await log.open(reply)
        await log.append(reply, "ab")
        await settled(log, reply, 2)
        read = await log.read(reply, 2, timeout=0.05)
        assert read is not None and (read.text, read.end, read.final) == ("", 2, None)

    async def test_finish_gives_readers_the_final_record_once_at_the_end(
        self, log: ReplyLog
    ) -> None:
        reply = new_id()
        await log.open(reply)
        await log.append(reply, "abc")
        await settled(log, reply, 3)
        waiting = asyncio.ensure_future(log.read(reply, 3, timeout=10))
        await asyncio.sleep(0.02)
        await log.finish(reply, {"status": "complete", "message": {"content": "abc"}})
        read = await asyncio.wait_for(waiting, 5)
        assert read.text == "" and read.final["status"] == "complete"
        early = await log.read(reply, 1, timeout=0.01)
        assert early.text == "bc" and early.end == 3 and early.final["status"] == "complete"
        assert not await log.is_alive(reply)

    async def test_unknown_reply_has_no_log(self, log: ReplyLog) -> None:
        reply = new_id()
        assert await log.read(reply, 0, timeout=0.01) is None
        assert await log.length(reply) is None
        assert not await log.is_alive(reply)

    async def test_the_owner_it_was_opened_for_is_kept(self, log: ReplyLog) -> None:
        mine, anonymous = new_id(), new_id()
        await log.open(mine, "u:7")
        await log.open(anonymous)
        await log.append(mine, "text")
        assert await log.owner(mine) == "u:7"
        assert await log.owner(anonymous) == ""
        assert await log.owner(new_id()) is None
        await log.finish(mine, {"status": "complete"})
        assert await log.owner(mine) == "u:7"  # until the log expires

    async def test_open_reply_is_alive(self, log: ReplyLog) -> None:
        reply = new_id()
        await log.open(reply)
        assert await log.is_alive(reply)
        assert await log.length(reply) == 0

    async def test_stop_request_wakes_the_owner(self, log: ReplyLog) -> None:
        reply = new_id()
        await log.open(reply)
        waiting = asyncio.ensure_future(log.wait_stop(reply))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await log.request_stop(reply)
        await asyncio.wait_for(waiting, 5)
        await log.request_stop(reply)  # idempotent

    async def test_stop_requested_before_the_owner_listens_is_not_lost(self, log: ReplyLog) -> None:
        reply = new_id()
        await log.open(reply)
        await log.request_stop(reply)
        await asyncio.wait_for(log.wait_stop(reply), 5)

    async def test_finished_log_expires_after_ttl(self, short_ttl_log: ReplyLog) -> None:
        reply = new_id()
        await short_ttl_log.open(reply)
        await short_ttl_log.append(reply, "x")
        await short_ttl_log.finish(reply, {"status": "complete"})
        for _ in range(200):
            if await short_ttl_log.read(reply, 0, timeout=0.01) is None:
                return
            await asyncio.sleep(0.02)
        pytest.fail("the finished log never expired")

    async def test_worker_names_the_owner_while_alive(self, log: ReplyLog) -> None:
        reply = new_id()
        await log.open(reply)
        assert await log.worker(reply) == WORKER
        await log.finish(reply, {"status": "complete"})
        assert await log.worker(reply) is None

    async def test_readers_are_counted_in_and_out(self, log: ReplyLog) -> None:
        reply = new_id()
        await log.open(reply)
        assert await log.readers(reply) == 0
        await log.reader_joined(reply)
        await log.reader_joined(reply)
        await log.reader_left(reply)
        assert await log.readers(reply) == 1
