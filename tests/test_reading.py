"""A reader's pacing: frames at most every FLUSH_INTERVAL, text exact however merged."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from django.test import override_settings

from chatstream.reading import Delta, Ending, follow
from chatstream.replylog import get_reply_log
from chatstream.replylog.base import ANSWER, LogRead, Part, ReplyWriter
from chatstream.replylog.memory import MemoryReplyLog
from tests.settings import CHATSTREAM as BASE

FLUSH = 0.2


async def write(writer: ReplyWriter, tokens: list[str], interval: float) -> None:
    for token in tokens:
        await asyncio.sleep(interval)
        await writer.append(token)
    await writer.close({"status": "complete"})


async def read_all(reply_id: str) -> list[tuple[float, Delta | Ending]]:
    clock = asyncio.get_running_loop().time
    return [(clock(), item) async for item in follow(reply_id, 0) if item is not None]


async def run(tokens: list[str], interval: float) -> list[tuple[float, Delta | Ending]]:
    reply_id = str(uuid.uuid4())
    writer = asyncio.create_task(write(await get_reply_log().open(reply_id), tokens, interval))
    items = await asyncio.wait_for(read_all(reply_id), timeout=30)
    await writer
    return items


async def test_a_fast_model_is_sent_in_fewer_frames_flush_interval_apart() -> None:
    tokens = [f"t{i} " for i in range(60)]
    with override_settings(CHATSTREAM={**BASE, "FLUSH_INTERVAL": FLUSH}):
        items = await run(tokens, interval=0.005)
    deltas = [(at, item) for at, item in items if isinstance(item, Delta)]
    assert "".join(d.text for _, d in deltas) == "".join(tokens)
    assert [d.end for _, d in deltas] == sorted({d.end for _, d in deltas})
    assert len(deltas) < len(tokens) / 4
    gaps = [later - earlier for (earlier, _), (later, _) in zip(deltas, deltas[1:], strict=False)]
    assert min(gaps) >= FLUSH * 0.9
    assert isinstance(items[-1][1], Ending) and items[-1][1].end == len("".join(tokens))


async def test_a_paced_model_gets_a_frame_per_token() -> None:
    tokens = ["one ", "two ", "three ", "four"]
    with override_settings(CHATSTREAM={**BASE, "FLUSH_INTERVAL": 0.02}):
        items = await run(tokens, interval=0.1)
    assert [item.text for _, item in items if isinstance(item, Delta)] == tokens


async def test_a_model_that_slows_down_is_followed_at_its_own_pace_again() -> None:
    """Fast text, then silence: the fast part is merged, the silence gets its
    keepalives, and the late token is sent as it comes, not held for an interval."""
    reply_id, clock = str(uuid.uuid4()), asyncio.get_running_loop().time
    fast = [f"f{i} " for i in range(30)]
    written: dict[str, float] = {}

    async def model() -> None:
        writer = await get_reply_log().open(reply_id)
        for token in fast:
            await asyncio.sleep(0.005)
            await writer.append(token)
        await asyncio.sleep(0.7)
        written["late"] = clock()
        await writer.append("late")
        await asyncio.sleep(0.3)
        await writer.close({"status": "complete"})

    async def reader() -> list[tuple[float, Delta | Ending | None]]:
        return [(clock(), item) async for item in follow(reply_id, 0)]

    settings = {**BASE, "FLUSH_INTERVAL": 0.1, "KEEPALIVE_INTERVAL": 0.25}
    with override_settings(CHATSTREAM=settings):
        task = asyncio.create_task(model())
        items = await asyncio.wait_for(reader(), timeout=30)
        await task
    deltas = [(at, item) for at, item in items if isinstance(item, Delta)]
    assert "".join(d.text for _, d in deltas) == "".join(fast) + "late"
    assert len(deltas) < len(fast) / 3  # the fast part was merged
    late_at = next(at for at, item in deltas if item.text.endswith("late"))
    assert late_at - written["late"] < 0.09  # not held for an interval
    assert any(item is None for _, item in items)  # the silence had its keepalive
    assert isinstance(items[-1][1], Ending)


async def test_readers_are_counted_in_the_log_only_where_the_policy_reads_the_count() -> None:
    counted = {}
    for policy in ("continue", "cancel"):
        with override_settings(CHATSTREAM={**BASE, "DISCONNECT_POLICY": policy}):
            reply_id, log = str(uuid.uuid4()), get_reply_log()
            writer = await log.open(reply_id)
            await writer.append("first")
            reader = follow(reply_id, 0)
            assert isinstance(await anext(reader), Delta)
            counted[policy] = await log.readers(reply_id)
            await reader.aclose()
            left = await log.readers(reply_id)
            await writer.close({"status": "complete"})
        assert left == 0
    assert counted == {"continue": 0, "cancel": 1}


class _ReadThroughWaitFor(MemoryReplyLog):
    """Reads as redis-py does, through ``asyncio.wait_for``: under Python 3.11 it returns
    a result that arrived together with a cancel and drops the cancel. The test hands
    out each read's result through ``gate``."""

    gate: asyncio.Future[LogRead]

    async def read(self, reply_id: str, offset: int, timeout: float) -> LogRead | None:
        self.gate = asyncio.get_running_loop().create_future()
        return await asyncio.wait_for(self.gate, timeout + 5)


async def test_a_reader_cancelled_as_its_read_returns_still_ends() -> None:
    backend = f"{__name__}._ReadThroughWaitFor"
    with override_settings(CHATSTREAM={**BASE, "REPLY_LOG": {"BACKEND": backend}}):
        log = get_reply_log()
        assert isinstance(log, _ReadThroughWaitFor)
        got: list[Delta | Ending | None] = []

        async def consume() -> None:
            async for item in follow(str(uuid.uuid4()), 0):
                got.append(item)

        reader = asyncio.create_task(consume())
        while not hasattr(log, "gate"):
            await asyncio.sleep(0.01)
        log.gate.set_result(LogRead((Part(ANSWER, "first"),), 5))  # the read returns ...
        reader.cancel()  # ... in the same turn as the cancel
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(reader, 5)
        assert [item.text for item in got if isinstance(item, Delta)] == ["first"]
