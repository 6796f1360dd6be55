"""The Redis reply log: the shared contract, plus what only several workers need."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aredis

from chatstream.replylog.base import ReplyLog
from chatstream.replylog.redis import RedisReplyLog
from tests.replylog_contract import ReplyLogContract, new_id


def make_log(url: str, prefix: str, **options: float) -> RedisReplyLog:
    return RedisReplyLog(location=url, options={"prefix": prefix, **options}, ttl=60)


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

    async def open(self, reply_id: str, owner: str = "") -> None:
        await self.writer.open(reply_id, owner)

    async def append(self, reply_id: str, text: str) -> None:
        await self.writer.append(reply_id, text)

    async def finish(self, reply_id: str, final: Any) -> None:
        await self.writer.finish(reply_id, final)

    async def wait_stop(self, reply_id: str) -> None:
        await self.writer.wait_stop(reply_id)

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
    await log.open(reply)
    for i in range(1000):
        await log.append(reply, f"{i} ")
        if i % 100 == 0:
            await asyncio.sleep(0.01)
    await log.finish(reply, {"status": "complete"})
    client = aredis.Redis.from_url(redis_url)
    entries = await client.xlen(log.key("reply", reply))
    await client.aclose()
    await log.aclose()
    assert entries < 50  # the marker, a few batches and the final record
    reader = make_log(redis_url, prefix)
    read = await reader.read(reply, 0, 0)
    await reader.aclose()
    assert read.text == "".join(f"{i} " for i in range(1000))


async def test_reader_on_another_worker_follows_and_resumes(
    two_workers: tuple[RedisReplyLog, RedisReplyLog],
) -> None:
    owner, reader = two_workers
    reply = new_id()
    await owner.open(reply)
    waiting = asyncio.ensure_future(reader.read(reply, 0, timeout=10))
    await owner.append(reply, "Hello")
    first = await asyncio.wait_for(waiting, 5)
    assert (first.text, first.end) == ("Hello", 5)
    await owner.append(reply, ", wor")
    await owner.append(reply, "ld")
    await owner.finish(reply, {"status": "complete"})
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
        await owner.open(reply)
        await owner.append(reply, "Hello")
        assert await other.length(reply) == 0
        assert await asyncio.wait_for(other.length_reaching(reply, 5), 5) == 5
        # An offset past all the text is given up on after a short wait: the caller's 4xx.
        assert await asyncio.wait_for(other.length_reaching(reply, 99), 5) == 5
        await owner.finish(reply, {"status": "complete"})
        assert await asyncio.wait_for(other.length_reaching(reply, 99), 0.5) == 5
    finally:
        await owner.aclose()
        await other.aclose()


async def test_stop_from_another_worker_reaches_the_owner(
    two_workers: tuple[RedisReplyLog, RedisReplyLog],
) -> None:
    owner, other = two_workers
    reply = new_id()
    await owner.open(reply)
    stopped = asyncio.ensure_future(owner.wait_stop(reply))
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
    await log.open(reply, "a:visitor")
    await log.append(reply, "before ")
    await asyncio.sleep(0.1)
    client = aredis.Redis.from_url(redis_url)
    await client.delete(log.key("reply", reply))  # as after a Redis restart
    await client.aclose()
    await log.append(reply, "after")
    await log.finish(reply, {"status": "complete"})
    read = await log.read(reply, 0, 0)
    owner = await other.owner(reply)  # another worker reads it from Redis
    await log.aclose()
    await other.aclose()
    assert (read.text, read.final) == ("before after", {"status": "complete"})
    assert owner == "a:visitor"
