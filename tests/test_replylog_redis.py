"""The Redis reply log: the shared contract, plus what only several workers need."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aredis

from chatstream.exceptions import LeaseLost
from chatstream.replylog.base import ReplyLog, ReplyWriter
from chatstream.replylog.redis import RedisReplyLog
from tests.replylog_contract import ReplyLogContract, new_id, settled


def make_log(url: str, prefix: str, **options: float) -> RedisReplyLog:
    return RedisReplyLog(location=url, options={"prefix": prefix, **options}, ttl=60)


async def sent_before(probe: str, client: aredis.Redis, monitor: Any) -> list[str]:
    """What Redis was sent, as ``monitor`` saw it, before ``client`` sets ``probe`` now."""
    await client.set(probe, "1")
    seen = []
    while probe not in (command := (await monitor.next_command())["command"]):
        seen.append(command)
    return seen


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex}"


class TestRedisReplyLog(ReplyLogContract):
    @pytest.fixture
    async def log(self, redis_url: str, prefix: str) -> AsyncIterator[RedisReplyLog]:
        log = make_log(redis_url, prefix)
        yield log
        await log.aclose()

    @pytest.fixture
    async def short_ttl_log(self, redis_url: str, prefix: str) -> AsyncIterator[RedisReplyLog]:
        log = RedisReplyLog(location=redis_url, options={"prefix": prefix}, ttl=0.05)
        yield log
        await log.aclose()


class _TwoWorkers(ReplyLog):
    """One log as two workers see it: the owner writes, another worker reads and stops."""

    def __init__(self, owner: RedisReplyLog, other: RedisReplyLog) -> None:
        super().__init__(location=owner.location)
        self.writer, self.other = owner, other

    async def open(self, reply_id: str, owner: str = "") -> ReplyWriter:
        return await self.writer.open(reply_id, owner)

    async def claim(self, reply_id: str) -> ReplyWriter | None:
        return await self.other.claim(reply_id)

    read = property(lambda self: self.other.read)
    length = property(lambda self: self.other.length)
    length_reaching = property(lambda self: self.other.length_reaching)
    owner = property(lambda self: self.other.owner)
    request_stop = property(lambda self: self.other.request_stop)
    is_alive = property(lambda self: self.other.is_alive)
    reader_joined = property(lambda self: self.other.reader_joined)
    reader_left = property(lambda self: self.other.reader_left)
    readers = property(lambda self: self.other.readers)
    worker = property(lambda self: self.other.worker)


class TestRedisReplyLogReadFromAnotherWorker(ReplyLogContract):
    """The same contract when the reader is not the worker that generates."""

    @pytest.fixture
    async def log(self, redis_url: str, prefix: str) -> AsyncIterator[ReplyLog]:
        owner, other = make_log(redis_url, prefix), make_log(redis_url, prefix)
        yield _TwoWorkers(owner, other)
        await owner.aclose()
        await other.aclose()

    @pytest.fixture
    async def short_ttl_log(self, redis_url: str, prefix: str) -> AsyncIterator[ReplyLog]:
        owner = RedisReplyLog(location=redis_url, options={"prefix": prefix}, ttl=0.05)
        other = make_log(redis_url, prefix)
        yield _TwoWorkers(owner, other)
        await owner.aclose()
        await other.aclose()


@pytest.fixture
async def two_workers(redis_url: str, prefix: str) -> AsyncIterator[tuple[RedisReplyLog, ...]]:
    """Two logs with their own connections and subscriptions: two workers' views."""
    a = make_log(redis_url, prefix, lease_ttl=0.6)
    b = make_log(redis_url, prefix, lease_ttl=0.6)
    yield a, b
    await a.aclose()
    await b.aclose()


async def test_appends_are_batched_not_written_per_token(redis_url: str, prefix: str) -> None:
    log = make_log(redis_url, prefix, batch_interval=0.05)
    reply = new_id()
    writer = await log.open(reply)
    for i in range(1000):
        await writer.append(f"{i} ")
        if i % 100 == 0:
            await asyncio.sleep(0.01)
    await writer.close({"status": "complete"})
    client = aredis.Redis.from_url(redis_url)
    entries = await client.xlen(log.key("reply", reply))
    await client.aclose()
    await log.aclose()
    assert entries < 50  # the marker, a few batches and the final record
    reader = make_log(redis_url, prefix)
    read = await reader.read(reply, 0, 0)
    await reader.aclose()
    assert read.text == "".join(f"{i} " for i in range(1000))


async def test_one_round_trip_a_batch_carries_every_replys_text(
    redis_url: str, prefix: str
) -> None:
    owner, other = make_log(redis_url, prefix, batch_interval=0.05), make_log(redis_url, prefix)
    replies = [new_id() for _ in range(3)]
    client = aredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        writers = [await owner.open(reply) for reply in replies]
        # Readers on another worker wait on the one wake-up that names all three.
        waiting = [asyncio.ensure_future(other.read(r, 0, timeout=10)) for r in replies]
        await asyncio.sleep(0.05)
        probe = owner.key("probe", replies[0])
        async with client.monitor() as monitor:
            for i, writer in enumerate(writers):
                await writer.append(f"text {i}")
            reads = await asyncio.wait_for(asyncio.gather(*waiting), 5)
            seen = await sent_before(probe, client, monitor)
        assert [read.text for read in reads] == ["text 0", "text 1", "text 2"]
        logs = [owner.key("reply", reply) for reply in replies]
        writes = [c for c in seen if c.startswith("EVALSHA") and any(k in c for k in logs)]
        assert len(writes) == 1
        assert all(key in writes[0] for key in logs)
    finally:
        await client.aclose()
        await owner.aclose()
        await other.aclose()


async def test_a_close_waits_for_the_batch_that_carries_its_earlier_text(
    redis_url: str, prefix: str
) -> None:
    owner, other = make_log(redis_url, prefix, batch_interval=0.01), make_log(redis_url, prefix)
    reply = new_id()
    client = aredis.Redis.from_url(redis_url)
    try:
        writer = await owner.open(reply)
        await client.execute_command("CLIENT", "PAUSE", 300, "WRITE")  # the batch hangs
        await writer.append("first ")
        for _ in range(500):
            if writer.inflight is not None:
                break
            await asyncio.sleep(0.005)
        assert writer.inflight is not None
        await writer.append("second")
        closing = asyncio.ensure_future(writer.close({"status": "complete"}))
        await asyncio.sleep(0.05)
        # The batch's connection drops mid-call: its text goes before the close's, still.
        held = [c["id"] for c in await client.client_list() if c["cmd"] == "evalsha"]
        assert held
        for client_id in held:
            await client.client_kill_filter(_id=client_id)
        assert await asyncio.wait_for(closing, 10)
        read = await other.read(reply, 0, 0)
        assert (read.text, read.end, read.final) == ("first second", 12, {"status": "complete"})
        # The marker, then the failed batch's text and the close's in one entry, then the end.
        entries = await client.xrange(owner.key("reply", reply))
        assert [int(fields[b"e"]) for _, fields in entries] == [0, 12, 12]
    finally:
        await client.execute_command("CLIENT", "UNPAUSE")
        await client.aclose()
        await owner.aclose()
        await other.aclose()


async def test_reader_on_another_worker_follows_and_resumes(
    two_workers: tuple[RedisReplyLog, RedisReplyLog],
) -> None:
    owner, reader = two_workers
    reply = new_id()
    writer = await owner.open(reply)
    waiting = asyncio.ensure_future(reader.read(reply, 0, timeout=10))
    await writer.append("Hello")
    first = await asyncio.wait_for(waiting, 5)
    assert (first.text, first.end) == ("Hello", 5)
    await writer.append(", wor")
    await writer.append("ld")
    await writer.close({"status": "complete"})
    rest = await reader.read(reply, 3, timeout=5)
    assert (rest.text, rest.end, rest.final) == ("lo, world", 12, {"status": "complete"})


async def test_a_resume_on_another_worker_waits_for_the_batch_holding_its_offset(
    redis_url: str, prefix: str
) -> None:
    # The owner's own readers see text at once; other workers once its batch is flushed.
    owner = make_log(redis_url, prefix, batch_interval=0.3)
    other = make_log(redis_url, prefix)
    reply = new_id()
    try:
        writer = await owner.open(reply)
        await writer.append("Hello")
        assert await other.length(reply) == 0
        assert await asyncio.wait_for(other.length_reaching(reply, 5), 5) == 5
        # An offset past all the text is given up on after a short wait: the caller's 4xx.
        assert await asyncio.wait_for(other.length_reaching(reply, 99), 5) == 5
        await writer.close({"status": "complete"})
        assert await asyncio.wait_for(other.length_reaching(reply, 99), 0.5) == 5
    finally:
        await owner.aclose()
        await other.aclose()


async def test_stop_from_another_worker_reaches_the_owner(
    two_workers: tuple[RedisReplyLog, RedisReplyLog],
) -> None:
    owner, other = two_workers
    reply = new_id()
    writer = await owner.open(reply)
    stopped = asyncio.ensure_future(writer.stop_signal())
    await asyncio.sleep(0.05)
    assert not stopped.done()
    await other.request_stop(reply)
    await asyncio.wait_for(stopped, 5)


async def test_lease_lapses_when_the_owner_is_gone(
    two_workers: tuple[RedisReplyLog, RedisReplyLog],
) -> None:
    owner, other = two_workers
    reply = new_id()
    await owner.open(reply)
    assert await other.is_alive(reply)
    await owner.aclose()  # the owner's heartbeat stops, as when its process dies
    for _ in range(100):
        if not await other.is_alive(reply):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the lease never lapsed")
    read = await other.read(reply, 0, 0)
    assert read is not None and read.final is None


async def test_log_that_vanished_is_rewritten_whole(redis_url: str, prefix: str) -> None:
    log, other = make_log(redis_url, prefix, batch_interval=0.01), make_log(redis_url, prefix)
    reply = new_id()
    writer = await log.open(reply, "a:visitor")
    await writer.append("before ")
    await asyncio.sleep(0.1)
    client = aredis.Redis.from_url(redis_url)
    await client.delete(log.key("reply", reply))  # as after a Redis restart
    await client.aclose()
    await writer.append("after")
    await writer.close({"status": "complete"})
    read = await log.read(reply, 0, 0)
    owner = await other.owner(reply)  # another worker reads it from Redis
    await log.aclose()
    await other.aclose()
    assert (read.text, read.final) == ("before after", {"status": "complete"})
    assert owner == "a:visitor"


async def test_a_batch_that_finds_its_log_vanished_has_it_rewritten_whole(
    redis_url: str, prefix: str
) -> None:
    owner, other = make_log(redis_url, prefix, batch_interval=0.01), make_log(redis_url, prefix)
    reply = new_id()
    try:
        writer = await owner.open(reply, "a:visitor")
        await writer.append("before ")
        await settled(other, reply, 7)
        client = aredis.Redis.from_url(redis_url)
        await client.delete(owner.key("reply", reply))  # as after a Redis restart
        await client.aclose()
        await writer.append("after")
        await settled(other, reply, 12)  # no close: the batch itself rewrote the log
        read = await other.read(reply, 0, 0)
        assert (read.text, read.final) == ("before after", None)
        assert await other.owner(reply) == "a:visitor"
    finally:
        await owner.aclose()
        await other.aclose()


async def test_a_reply_taken_over_fences_out_its_stalled_owner(
    two_workers: tuple[RedisReplyLog, RedisReplyLog], redis_url: str
) -> None:
    owner, other = two_workers
    reply = new_id()
    writer = await owner.open(reply)
    await writer.append("Hello")
    await settled(other, reply, 5)
    client = aredis.Redis.from_url(redis_url)
    await client.delete(owner.key("lease", reply))  # the owner stalled past its lease
    await client.aclose()
    claim = await other.claim(reply)
    assert claim is not None
    assert await other.claim(reply) is None  # one recovery at a time
    # The owner learns at its next heartbeat: its stop watcher wakes, and it writes nothing.
    await asyncio.wait_for(writer.stop_signal(), 5)
    assert writer.lost
    with pytest.raises(LeaseLost):
        await writer.append(" more")
    assert not await writer.close({"status": "complete"})
    assert await claim.close({"status": "interrupted"})
    read = await other.read(reply, 0, 0)
    assert (read.text, read.final) == ("Hello", {"status": "interrupted"})
    client = aredis.Redis.from_url(redis_url)
    finals = [f for _, f in await client.xrange(owner.key("reply", reply)) if b"f" in f]
    await client.aclose()
    assert len(finals) == 1


async def test_a_fenced_out_flush_writes_nothing(redis_url: str, prefix: str) -> None:
    owner, other = make_log(redis_url, prefix, batch_interval=0.01), make_log(redis_url, prefix)
    reply = new_id()
    try:
        writer = await owner.open(reply)
        client = aredis.Redis.from_url(redis_url)
        await client.delete(owner.key("lease", reply))
        await client.aclose()
        assert await other.claim(reply) is not None
        await writer.append("late text")  # batched; its flush finds the fence taken
        for _ in range(200):
            if writer.lost:
                break
            await asyncio.sleep(0.01)
        assert writer.lost
        assert await other.length(reply) == 0
    finally:
        await owner.aclose()
        await other.aclose()


async def test_an_owner_asks_for_its_fence_only_when_redis_has_not_said_so_lately(
    redis_url: str, prefix: str
) -> None:
    log = make_log(redis_url, prefix)  # a 10 s lease: Redis confirmed the fence at open
    reply = new_id()
    client = aredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        writer = await log.open(reply)
        probe, fence = log.key("probe", reply), log.key("fence", reply)
        async with client.monitor() as monitor:
            assert await writer.holds_lease()
            seen = await sent_before(probe, client, monitor)
        assert not [command for command in seen if fence in command]
    finally:
        await client.aclose()
        await log.aclose()


async def test_an_owner_that_stalled_past_its_lease_learns_it_was_taken_over(
    redis_url: str, prefix: str
) -> None:
    owner, other = make_log(redis_url, prefix, lease_ttl=0.6), make_log(redis_url, prefix)
    reply = new_id()
    try:
        writer = await owner.open(reply)
        client = aredis.Redis.from_url(redis_url)
        await client.delete(owner.key("lease", reply))  # lapsed while the owner stalled
        await client.aclose()
        assert await other.claim(reply) is not None
        time.sleep(0.3)  # the stall: this loop (the owner's heartbeat too) runs nothing
        assert not await writer.holds_lease()
        assert writer.lost
    finally:
        await owner.aclose()
        await other.aclose()
