"""The ReplyLog contract, run against every implementation (memory, Redis)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from chatstream.replylog.base import ANSWER, REASONING, WORKER, Part, ReplyLog


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
        writer = await log.open(reply)
        pieces = ["Hé", "llo", " 世界", " 👩‍👩‍👧", "!"]
        for piece in pieces:
            await writer.append(piece)
        full = "".join(pieces)
        await settled(log, reply, len(full))
        for offset in range(len(full) + 1):
            read = await log.read(reply, offset, timeout=0.01)
            assert read is not None
            assert (read.text, read.end) == (full[offset:], len(full))

    async def test_many_small_appends_read_back_whole(self, log: ReplyLog) -> None:
        reply = new_id()
        writer = await log.open(reply)
        tokens = [f"{i}," for i in range(500)]
        for token in tokens:
            await writer.append(token)
        full = "".join(tokens)
        await settled(log, reply, len(full))
        for offset in (0, 1, 137, 1000, len(full) - 1):
            read = await log.read(reply, offset, timeout=0.01)
            assert read is not None and read.text == full[offset:]

    async def test_read_waits_for_new_text(self, log: ReplyLog) -> None:
        reply = new_id()
        writer = await log.open(reply)
        waiting = asyncio.ensure_future(log.read(reply, 0, timeout=10))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await writer.append("late")
        read = await asyncio.wait_for(waiting, 5)
        assert (read.text, read.end, read.final) == ("late", 4, None)

    async def test_read_times_out_empty(self, log: ReplyLog) -> None:
        reply = new_id()
        writer = await log.open(reply)
        await writer.append("ab")
        await settled(log, reply, 2)
        read = await log.read(reply, 2, timeout=0.05)
        assert read is not None and (read.text, read.end, read.final) == ("", 2, None)

    async def test_finish_gives_readers_the_final_record_once_at_the_end(
        self, log: ReplyLog
    ) -> None:
        reply = new_id()
        writer = await log.open(reply)
        await writer.append("abc")
        await settled(log, reply, 3)
        waiting = asyncio.ensure_future(log.read(reply, 3, timeout=10))
        await asyncio.sleep(0.02)
        await writer.close({"status": "complete", "message": {"content": "abc"}})
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
        writer = await log.open(mine, "u:7")
        await log.open(anonymous)
        await writer.append("text")
        assert await log.owner(mine) == "u:7"
        assert await log.owner(anonymous) == ""
        assert await log.owner(new_id()) is None
        await writer.close({"status": "complete"})
        assert await log.owner(mine) == "u:7"  # until the log expires

    async def test_open_reply_is_alive(self, log: ReplyLog) -> None:
        reply = new_id()
        await log.open(reply)
        assert await log.is_alive(reply)
        assert await log.length(reply) == 0

    async def test_stop_request_wakes_the_owner(self, log: ReplyLog) -> None:
        reply = new_id()
        writer = await log.open(reply)
        waiting = asyncio.ensure_future(writer.stop_signal())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await log.request_stop(reply)
        await asyncio.wait_for(waiting, 5)
        await log.request_stop(reply)  # idempotent

    async def test_stop_requested_before_the_owner_listens_is_not_lost(self, log: ReplyLog) -> None:
        reply = new_id()
        writer = await log.open(reply)
        await log.request_stop(reply)
        await asyncio.wait_for(writer.stop_signal(), 5)

    async def test_finished_log_expires_after_ttl(self, short_ttl_log: ReplyLog) -> None:
        reply = new_id()
        writer = await short_ttl_log.open(reply)
        await writer.append("x")
        await writer.close({"status": "complete"})
        for _ in range(200):
            if await short_ttl_log.read(reply, 0, timeout=0.01) is None:
                return
            await asyncio.sleep(0.02)
        pytest.fail("the finished log never expired")

    async def test_worker_names_the_owner_while_alive(self, log: ReplyLog) -> None:
        reply = new_id()
        writer = await log.open(reply)
        assert await log.worker(reply) == WORKER
        await writer.close({"status": "complete"})
        assert await log.worker(reply) is None

    async def test_readers_are_counted_in_and_out(self, log: ReplyLog) -> None:
        reply = new_id()
        await log.open(reply)
        assert await log.readers(reply) == 0
        await log.reader_joined(reply)
        await log.reader_joined(reply)
        await log.reader_left(reply)
        assert await log.readers(reply) == 1

    async def test_parts_keep_their_kind_and_offsets_count_both(self, log: ReplyLog) -> None:
        reply = new_id()
        writer = await log.open(reply)
        for kind, text in [(REASONING, "thin"), (REASONING, "k"), (ANSWER, "Hi"), (REASONING, "é")]:
            await writer.append(text, kind)
        await writer.append("!")
        await settled(log, reply, 9)
        read = await log.read(reply, 0, timeout=0.01)
        assert read.parts == (
            Part(REASONING, "think"),
            Part(ANSWER, "Hi"),
            Part(REASONING, "é"),
            Part(ANSWER, "!"),
        )
        read = await log.read(reply, 3, timeout=0.01)
        assert (read.parts, read.end) == (
            (Part(REASONING, "nk"), Part(ANSWER, "Hi"), Part(REASONING, "é"), Part(ANSWER, "!")),
            9,
        )
        read = await log.read(reply, 6, timeout=0.01)
        assert read.parts == (Part(ANSWER, "i"), Part(REASONING, "é"), Part(ANSWER, "!"))

    async def test_a_live_reply_cannot_be_claimed(self, log: ReplyLog) -> None:
        reply = new_id()
        writer = await log.open(reply)
        assert await log.claim(reply) is None
        await writer.close({"status": "complete"})
        claim = await log.claim(reply)
        assert claim is not None
        # The log has its final record already: the claim adds none.
        assert not await claim.close({"status": "interrupted"})
        read = await log.read(reply, 0, timeout=0.01)
        assert read.final == {"status": "complete"}

    async def test_close_writes_the_final_record_once(self, log: ReplyLog) -> None:
        reply = new_id()
        writer = await log.open(reply)
        await writer.append("ab")
        assert await writer.close({"status": "stopped"})
        read = await log.read(reply, 0, timeout=0.01)
        assert (read.text, read.final) == ("ab", {"status": "stopped"})
        assert not await log.is_alive(reply)
