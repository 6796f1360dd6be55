"""The Redis reply log: several workers (or machines) share replies, stops and leases.

Layout, per reply (``P`` is the key prefix):

- ``P:reply:<id>`` — a stream. Each entry holds text ``t`` and the reply's length
  after it ``e`` (code points); the first entry is an empty marker written by
  ``open()``, the last holds the final record ``f``. It expires ``ttl`` seconds
  after ``finish()`` (and a day after ``open()``, should its owner vanish).
- ``P:lease:<id>`` — the owner's lease, refreshed by one heartbeat per process.
  A reply whose lease is gone has no live generation: anyone may recover it.
- ``P:fence:<id>`` — the token of whoever writes the reply now (its owner, or the
  recovery that took it over); every write checks it.
- ``P:stop:<id>`` — a stop request, announced on the ``P:events`` channel.
- ``P:readers:<id>`` — how many readers follow the reply, kept only under the
  ``cancel`` disconnect policy, which stops a reply none follows.

One pub/sub subscription per process hears ``P:events``: ``s:<id>`` wakes the
generation that owns the reply, ``t:<id>`` (sent with each flush) wakes the
process's readers of it. Readers wait on that, not on a blocking ``XREAD`` each, so
a thousand open streams cost one Redis connection while they wait, not a thousand.

Appends are batched: text is buffered, and every ``batch_interval`` seconds one
script call writes what all of the process's replies have pending, so Redis work
grows with neither tokens nor replies.
Readers on the worker that generates a reply read its copy in memory; only
readers on other workers go through Redis.
Readers resume from an offset; the stream id where a read ended is remembered,
so a reader's next read is an ``XRANGE`` from there, not a rescan.

Deliberately tolerant of Redis going away: a failed flush keeps its text and is
retried, a log that vanished (a Redis restart) is rewritten whole by its owner,
and the lease is re-created by the heartbeat.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aredis
from redis.exceptions import RedisError

from chatstream import metrics
from chatstream.exceptions import LeaseLost, ReplyLogUnavailable
from chatstream.replylog.base import (
    ANSWER,
    REASONING,
    WORKER,
    LogRead,
    Part,
    PartKind,
    ReplyLog,
    ReplyWriter,
    cancel_requested,
    settle,
    wait_done,
)
from chatstream.replylog.buffer import ReplyBuffer

logger = logging.getLogger(__name__)

_ORPHAN_TTL = 24 * 3600  # a log whose owner vanished before finish() still goes away
_CURSORS = 20_000  # remembered (reply, offset) -> stream id hints
_RETRY_DELAY = 0.5  # seconds between flush attempts while Redis is away
_CATCH_UP = 1.0  # seconds, past two batches, a resume waits for its offset to arrive
_CLOSE_RETRY = 10.0  # seconds a writer keeps trying to write its final record


_APPEND = """
local fence = redis.call('GET', KEYS[2])
if fence and fence ~= ARGV[1] then return -1 end
if not fence or redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 7, #ARGV, 3 do
  if ARGV[i] == 'r' then
    redis.call('XADD', KEYS[1], '*', 't', ARGV[i + 1], 'e', ARGV[i + 2], 'k', 'r')
  else
    redis.call('XADD', KEYS[1], '*', 't', ARGV[i + 1], 'e', ARGV[i + 2])
  end
end
local result = 1
if ARGV[4] ~= '' then
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1][2]
  for i = 1, #last, 2 do
    if last[i] == 'f' then result = 2 end
  end
  if result == 1 then redis.call('XADD', KEYS[1], '*', 'e', ARGV[5], 'f', ARGV[4]) end
end
if ARGV[6] ~= '0' then
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
  redis.call('DEL', KEYS[3], KEYS[4])
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return result
"""
# Many replies' pending text, one script call a batch: -1 fenced out, 0 the log
# vanished, 1 written (per reply, in order); one wake-up names all that were written.
_APPEND_MANY = """
local out, woken, a = {}, {}, 2
for i = 1, #KEYS, 2 do
  local reply, token, first = ARGV[a], ARGV[a + 1], a + 3
  a = first + 3 * tonumber(ARGV[a + 2])
  local fence = redis.call('GET', KEYS[i + 1])
  if fence and fence ~= token then
    out[#out + 1] = -1
  elseif not fence or redis.call('EXISTS', KEYS[i]) == 0 then
    out[#out + 1] = 0
  else
    for j = first, a - 1, 3 do
      if ARGV[j] == 'r' then
        redis.call('XADD', KEYS[i], '*', 't', ARGV[j + 1], 'e', ARGV[j + 2], 'k', 'r')
      else
        redis.call('XADD', KEYS[i], '*', 't', ARGV[j + 1], 'e', ARGV[j + 2])
      end
    end
    out[#out + 1] = 1
    woken[#woken + 1] = reply
  end
end
if #woken > 0 then redis.call('PUBLISH', ARGV[1], 't:' .. table.concat(woken, ' ')) end
return out
"""
# A new reply: its log (the owner on entry one), its fence and its lease, in one call.
_OPEN = """
redis.call('DEL', KEYS[1], KEYS[4])
redis.call('XADD', KEYS[1], '*', 't', '', 'e', 0, 'o', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[4])
redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[3])
return 1
"""
# The log vanished (a Redis restart): its owner writes it whole, and takes its fence back.
_REWRITE = """
local fence = redis.call('GET', KEYS[2])
if fence and fence ~= ARGV[1] then return -1 end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[8])
redis.call('DEL', KEYS[1])
redis.call('XADD', KEYS[1], '*', 't', '', 'e', 0, 'o', ARGV[7])
redis.call('EXPIRE', KEYS[1], ARGV[8])
return 1
"""
# A claim: only a reply with no lease, and (unless forced) a log still there.
_CLAIM = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if ARGV[4] == '0' and redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[5])
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
return 1
"""
# Per reply: renew the lease while the fence is ours (re-taking one a restart dropped).
_HEARTBEAT = """
local out = {}
for i = 1, #KEYS, 2 do
  local token = ARGV[3 + (i + 1) / 2]
  local fence = redis.call('GET', KEYS[i + 1])
  if fence and fence ~= token then
    out[#out + 1] = 0
  else
    if not fence then redis.call('SET', KEYS[i + 1], token, 'EX', ARGV[3]) end
    redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
    out[#out + 1] = 1
  end
end
return out
"""

# A stop for a reply whose log has no lease (it ended, or its owner died) would only be
# left behind: it is set for live replies, and for those whose log vanished (a restart).
_STOP = """
if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[3], '1', 'EX', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""
# Readers in and out; the count goes away at zero, so none outlives its reply.
_COUNT_READER = """
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if n <= 0 then redis.call('DEL', KEYS[1]) else redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return n
"""

_LOST, _VANISHED, _WRITTEN = -1, 0, 1  # and 2: the log had its final record already


class _Writer(ReplyWriter):
    """The owner's side of one reply: buffered parts, flushed in order, fenced by ``token``.

    ``buffer`` holds the whole reply for readers on this worker (they never wait
    on Redis) and for rewriting a log that vanished. A claim (recovery) is a
    writer with nothing to append.
    """

    def __init__(
        self, log: RedisReplyLog, state: _LoopState, reply_id: str, owner: str, token: str
    ) -> None:
        super().__init__(reply_id, ReplyBuffer())
        self.log, self.state, self.owner, self.token = log, state, owner, token
        self.pending: list[Part] = []
        self.lock = asyncio.Lock()
        # Set while the process's batch carries this reply's text: a flush waits for it.
        self.inflight: asyncio.Future[None] | None = None
        self.stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.claimed = False  # a recovery's writer: appends nothing, rewrites nothing
        # When (this loop's clock, as the command was sent) Redis last said the fence is ours.
        self.confirmed = float("-inf")

    @property
    def keys(self) -> list[str]:
        log, reply_id = self.log, self.reply_id
        return [log.key(kind, reply_id) for kind in ("reply", "fence", "lease", "stop")]

    async def append(self, text: str, kind: PartKind = ANSWER) -> None:
        if self.lost or self.claimed:
            raise LeaseLost()
        if text:
            self.pending.append(Part(kind, text))
            self.buffer.append(text, kind)
            self.state.batch(self)

    async def flush(self, final: Mapping[str, Any] | None = None, close: bool = False) -> bool:
        """Write what is pending (and the final record, unless the log has one).

        False once fenced out, or when the log had its final record already.
        """
        async with self.lock:
            if self.inflight is not None:  # its text goes first; back in pending if it failed
                await asyncio.shield(self.inflight)
            if self.lost:
                return False
            if not self.pending and final is None and not close:
                return True
            # Taken before any await: appends made meanwhile go to the next flush.
            parts, end = self.pending, self.buffer.length
            self.pending = []
            sent = asyncio.get_running_loop().time()
            try:
                with metrics.REPLY_LOG_FLUSH.time():
                    result = await self._write(parts, end, final, close)
                if result == _WRITTEN:
                    self.confirmed = sent
                if result == _VANISHED and self.claimed:
                    return False  # nothing to finalise into: its lease lapses by itself
                if result == _VANISHED:
                    await self._rewrite()
                    whole = _upto(self.buffer.after(0), self.buffer.length - end)
                    result = await self._write(whole, end, final, close)
            except BaseException as exc:
                self.pending[:0] = parts
                if isinstance(exc, RedisError):
                    metrics.REPLY_LOG_FLUSH_FAILURES.inc()
                raise
            if result == _LOST:
                self.fenced_out()
                return False
            return result == _WRITTEN

    async def _write(
        self, parts: Any, end: int, final: Mapping[str, Any] | None, close: bool
    ) -> int:
        args: list[str | int | float] = [
            self.token,
            self.log.channel,
            f"t:{self.reply_id}",
            json.dumps(final) if final is not None else "",
            end,
            max(1, int(self.log.ttl)) if close else 0,
            *_entries(parts, end),
        ]
        return int(await self.state.append(keys=self.keys, args=args))

    async def _rewrite(self) -> None:
        args: list[str | int | float] = [self.token, "", "", "", 0, 0, self.owner, _ORPHAN_TTL]
        if int(await self.state.rewrite(keys=self.keys, args=args)) == _LOST:
            self.fenced_out()
            raise LeaseLost()

    def fenced_out(self) -> None:
        if not self.lost:
            logger.warning("Reply %s was taken over by another worker; stopping.", self.reply_id)
        self.lost = True
        settle(self.stop)
        self.pending = []

    async def holds_lease(self) -> bool:
        """Asks Redis unless it said so lately.

        A lease lives ``lease_ttl`` after it was set, and no one takes a reply over
        while it does; a Redis that lost it (a restart) has a claimer wait a heartbeat
        first. So for a heartbeat's interval after Redis last confirmed the fence, it is
        still ours. Either way, the row's conditional write decides once, and the
        final record follows the row.
        """
        if self.lost:
            return False
        if asyncio.get_running_loop().time() - self.confirmed < self.log._heartbeat_interval:
            return True
        try:
            fence = await self.state.client.get(self.log.key("fence", self.reply_id))
        except RedisError:
            return True  # unknown: the row's conditional write still decides once
        if fence is not None and fence != self.token:
            self.fenced_out()
        return not self.lost

    async def close(self, final: Mapping[str, Any] | None) -> bool:
        if self.state.writers.get(self.reply_id) is self:
            del self.state.writers[self.reply_id]
        self.state.batched.pop(self.reply_id, None)  # flushed here, with the final record
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + _CLOSE_RETRY, _RETRY_DELAY
        while True:
            try:
                written = await self.flush(final, close=True)
                break
            except (RedisError, LeaseLost) as exc:
                if isinstance(exc, LeaseLost) or loop.time() + delay > deadline:
                    # Readers elsewhere see the lease lapse and read the database.
                    logger.warning("Could not close the reply log of %s: %s", self.reply_id, exc)
                    written = not self.lost
                    break
                await asyncio.sleep(delay)
                delay = min(2 * delay, 2.0)
        if written and final is not None:
            self.buffer.finish(final)  # this worker's readers end at once
        else:
            self.buffer._wake()  # they read Redis, which has the word
        return written and final is not None

    def stop_signal(self) -> asyncio.Future[None]:
        if self.claimed:
            return asyncio.ensure_future(self._claimed_stop())
        # Opened, it was registered before its log existed: a stop published since finds
        # it, and one published while the subscription was down is found as it resubscribes.
        return self.stop

    async def _claimed_stop(self) -> None:
        state = self.state
        await state.subscribed.wait()
        try:  # a stop may have come before this process took the reply
            # Shielded: this watcher is cancelled as soon as a reply ends, often while
            # this first command still runs, and redis-py cancelled mid-command (on a
            # connection it is opening) can leave the cancelled task hanging.
            stop_key = self.log.key("stop", self.reply_id)
            if await asyncio.shield(state.client.exists(stop_key)):
                return
        except RedisError:
            pass  # the subscription still hears a stop once Redis is back
        await asyncio.shield(self.stop)


def _upto(parts: tuple[Part, ...], excess: int) -> list[Part]:
    """``parts`` less their last ``excess`` code points."""
    kept = list(parts)
    while excess > 0 and kept:
        last = kept.pop()
        if len(last.text) > excess:
            kept.append(Part(last.kind, last.text[:-excess]))
        excess -= len(last.text)
    return kept


def _entries(parts: Any, end: int) -> list[str | int | float]:
    """The scripts' arguments for ``parts`` ending at ``end``: kind, text, end, per entry."""
    args: list[str | int | float] = []
    ends = end - sum(len(part.text) for part in parts)
    for part in _merged(parts):
        ends += len(part.text)
        args += ["r" if part.kind == REASONING else "a", part.text, ends]
    return args


def _merged(parts: Any) -> list[Part]:
    merged: list[Part] = []
    for part in parts:
        if merged and merged[-1].kind == part.kind:
            merged[-1] = Part(part.kind, merged[-1].text + part.text)
        else:
            merged.append(part)
    return merged


class _LoopState:
    """Per event loop: the client, owned replies and their batch, the stop subscription,
    the heartbeat."""

    def __init__(self, log: RedisReplyLog) -> None:
        # A blocking pool: under a burst, commands queue for a connection instead of
        # failing with "Too many connections" (the plain pool's answer past its size).
        pool = aredis.BlockingConnectionPool.from_url(
            log.location,
            decode_responses=True,
            max_connections=log.max_connections,
            timeout=log.pool_timeout,
        )
        self.client = aredis.Redis.from_pool(pool)
        self.open = self.client.register_script(_OPEN)
        self.append = self.client.register_script(_APPEND)
        self.rewrite = self.client.register_script(_REWRITE)
        self.claim = self.client.register_script(_CLAIM)
        self.heartbeat_script = self.client.register_script(_HEARTBEAT)
        self.stop_script = self.client.register_script(_STOP)
        self.count_reader = self.client.register_script(_COUNT_READER)
        self.append_many = self.client.register_script(_APPEND_MANY)
        self.writers: dict[str, _Writer] = {}
        # Writers with text to flush in the next batch, and the task that flushes them.
        self.batched: dict[str, _Writer] = {}
        self.flusher: asyncio.Task[None] | None = None
        self.batch_interval, self.channel = log.batch_interval, log.channel
        # Readers' wake-ups by reply; a future lives while some reader waits on it.
        self.waiters: weakref.WeakValueDictionary[str, asyncio.Future[None]] = (
            weakref.WeakValueDictionary()
        )
        self.listener: asyncio.Task[None] | None = None
        self.heartbeat: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()
        # When Redis last started, as this loop's clock tells (asked at most every second).
        self.started_at: float | None = None
        self.asked_at = 0.0

    def batch(self, writer: _Writer) -> None:
        self.batched[writer.reply_id] = writer
        if self.flusher is None:
            self.flusher = asyncio.ensure_future(self._flush_batches())

    async def _flush_batches(self) -> None:
        delay = self.batch_interval
        try:
            while self.batched and not cancel_requested():
                await asyncio.sleep(delay)
                delay = self.batch_interval if await self._flush_batch() else _RETRY_DELAY
        finally:
            self.flusher = None

    async def _flush_batch(self) -> bool:
        """Write every batched reply's pending text in one round trip; False if Redis failed.

        A reply whose own flush runs (its close) waits for the next batch; one whose
        log vanished is rewritten by its writer; one fenced out stops.
        """
        batch: list[tuple[_Writer, list[Part], int]] = []
        for writer in list(self.batched.values()):
            if writer.lock.locked():
                continue
            del self.batched[writer.reply_id]
            if writer.pending and not writer.lost:
                batch.append((writer, writer.pending, writer.buffer.length))
                writer.pending = []
        if not batch:
            return True
        keys: list[str] = []
        args: list[str | int | float] = [self.channel]
        for writer, parts, end in batch:
            keys += writer.keys[:2]
            entries = _entries(parts, end)
            args += [writer.reply_id, writer.token, len(entries) // 3, *entries]
        loop = asyncio.get_running_loop()
        done, sent = loop.create_future(), loop.time()
        for writer, _, _ in batch:
            writer.inflight = done
        try:
            with metrics.REPLY_LOG_FLUSH.time():
                results = await self.append_many(keys=keys, args=args)
        except BaseException as exc:
            for writer, parts, _ in batch:
                writer.pending[:0] = parts
                self.batched.setdefault(writer.reply_id, writer)
            if not isinstance(exc, RedisError):
                raise
            metrics.REPLY_LOG_FLUSH_FAILURES.inc()
            logger.warning("Reply log flush failed for %d replies: %s", len(batch), exc)
            return False
        finally:
            for writer, _, _ in batch:
                writer.inflight = None
            done.set_result(None)
        vanished = []
        for (writer, parts, _), result in zip(batch, results, strict=True):
            if result == _WRITTEN:
                writer.confirmed = sent
            elif result == _LOST:
                writer.fenced_out()
            else:
                writer.pending[:0] = parts
                vanished.append(writer)
        written = True
        for writer in vanished:  # a Redis restart: each writes its log whole again
            try:
                await writer.flush()
            except (RedisError, LeaseLost) as exc:
                logger.warning("Reply log rewrite failed for %s: %s", writer.reply_id, exc)
                if writer.pending and not writer.lost:
                    self.batched.setdefault(writer.reply_id, writer)
                written = False
        return written


class RedisReplyLog(ReplyLog):
    """``OPTIONS``: ``prefix`` ("chatstream"), ``lease_ttl`` (10 s), ``batch_interval``
    (0.05 s), ``max_connections`` (200 per process) and ``pool_timeout`` (30 s)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self.location:
            raise ValueError("RedisReplyLog needs a LOCATION (a redis:// URL).")
        self.prefix = str(self.options.get("prefix", "chatstream"))
        self.lease_ttl = float(self.options.get("lease_ttl", 10))
        self.batch_interval = float(self.options.get("batch_interval", 0.05))
        self.channel = f"{self.prefix}:events"
        self.max_connections = int(self.options.get("max_connections", 200))
        self.pool_timeout = float(self.options.get("pool_timeout", 30))
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._cursors: OrderedDict[tuple[str, int], str] = OrderedDict()

    def key(self, kind: str, reply_id: str) -> str:
        return f"{self.prefix}:{kind}:{reply_id}"

    @property
    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = _LoopState(self)
        return state

    # --- the owner's side -------------------------------------------------------

    async def open(self, reply_id: str, owner: str = "") -> ReplyWriter:
        state = self._state
        await self._ensure_background(state)
        writer = _Writer(self, state, reply_id, owner, uuid.uuid4().hex)
        # Registered first: a stop published once the log is open finds its writer,
        # so the writer need not look for one in Redis (see ``stop_signal``).
        state.writers[reply_id] = writer
        args: list[str | int | float] = [owner, writer.token, self._lease_ms, _ORPHAN_TTL, WORKER]
        sent = asyncio.get_running_loop().time()
        try:
            await state.open(keys=writer.keys, args=args)
        except BaseException as exc:
            if state.writers.get(reply_id) is writer:
                del state.writers[reply_id]
            if isinstance(exc, RedisError):
                raise ReplyLogUnavailable() from exc
            raise
        writer.confirmed = sent
        return writer

    async def claim(self, reply_id: str) -> ReplyWriter | None:
        state = self._state
        if reply_id in state.writers:
            return None
        writer = _Writer(self, state, reply_id, "", uuid.uuid4().hex)
        writer.claimed = True
        # Long enough to finalise a row; a slower recovery is taken over, and fenced out.
        args: list[str | int | float] = [
            writer.token,
            WORKER,
            max(self._lease_ms, 30_000),
            0,
            _ORPHAN_TTL,
        ]
        try:
            result = int(await state.claim(keys=writer.keys, args=args))
            if result == -2:
                # No log at all. If Redis restarted lately, a live owner rewrites it (and
                # renews its lease) at its next heartbeat: wait for that once. Else the
                # log expired long ago, or never was: take it now.
                if await self._restarted_lately(state):
                    await asyncio.sleep(self._heartbeat_interval + 0.5)
                args[3] = 1
                result = int(await state.claim(keys=writer.keys, args=args))
        except RedisError as exc:
            raise ReplyLogUnavailable() from exc
        return writer if result == 1 else None

    async def ping(self) -> None:
        try:
            await self._state.client.ping()
        except RedisError as exc:
            raise ReplyLogUnavailable() from exc

    async def worker(self, reply_id: str) -> str | None:
        try:
            worker = await self._state.client.get(self.key("lease", reply_id))
            return None if worker is None else str(worker)
        except RedisError as exc:
            raise ReplyLogUnavailable() from exc

    # --- anyone's side ----------------------------------------------------------

    async def request_stop(self, reply_id: str) -> None:
        keys = [self.key(kind, reply_id) for kind in ("reply", "lease", "stop")]
        args: list[str | int] = [max(60, int(self.ttl)), self.channel, f"s:{reply_id}"]
        try:
            await self._state.stop_script(keys=keys, args=args)
        except RedisError as exc:
            raise ReplyLogUnavailable() from exc

    async def reader_joined(self, reply_id: str) -> None:
        await self._count_reader(reply_id, 1)

    async def reader_left(self, reply_id: str) -> None:
        await self._count_reader(reply_id, -1)

    async def _count_reader(self, reply_id: str, delta: int) -> None:
        # A worker that dies leaves its readers counted: the reply then runs on, as
        # under the "continue" policy, which is the safe way to be wrong.
        keys, args = [self.key("readers", reply_id)], [delta, _ORPHAN_TTL]
        try:
            await self._state.count_reader(keys=keys, args=args)
        except RedisError as exc:
            raise ReplyLogUnavailable() from exc

    async def readers(self, reply_id: str) -> int:
        try:
            return int(await self._state.client.get(self.key("readers", reply_id)) or 0)
        except RedisError as exc:
            raise ReplyLogUnavailable() from exc

    async def _restarted_lately(self, state: _LoopState) -> bool:
        """Whether Redis started within a lease (its data, leases included, may be gone)."""
        loop = asyncio.get_running_loop()
        if state.started_at is None or loop.time() - state.asked_at > 1:
            info = await state.client.info("server")
            state.started_at = loop.time() - float(info["uptime_in_seconds"])
            state.asked_at = loop.time()
        return loop.time() - state.started_at < self.lease_ttl + self._heartbeat_interval + 1

    async def is_alive(self, reply_id: str) -> bool:
        if reply_id in self._state.writers:
            return True
        client = self._state.client
        try:
            if await client.exists(self.key("lease", reply_id)):
                return True
            if await client.exists(self.key("reply", reply_id)):
                return False  # a log with no lease: its owner is gone
            if not await self._restarted_lately(self._state):
                return False
            # A Redis restart drops both until the owner's next heartbeat: look again then.
            await asyncio.sleep(self._heartbeat_interval + 0.5)
            return bool(await client.exists(self.key("lease", reply_id)))
        except RedisError as exc:
            raise ReplyLogUnavailable() from exc

    async def length(self, reply_id: str) -> int | None:
        writer = self._state.writers.get(reply_id)
        if writer is not None:
            return writer.buffer.length
        try:
            last: Any = await self._state.client.xrevrange(self.key("reply", reply_id), count=1)
        except RedisError as exc:
            raise ReplyLogUnavailable() from exc
        return int(last[0][1]["e"]) if last else None

    async def length_reaching(self, reply_id: str, offset: int) -> int | None:
        # The owner's readers may have sent text that is still batched there: a
        # client resuming here from their offset waits out a flush or two for it.
        length = await self.length(reply_id)
        if length is None or length >= offset or reply_id in self._state.writers:
            return length
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2 * self.batch_interval + _CATCH_UP
        while length < offset and (left := deadline - loop.time()) > 0:
            read = await self.read(reply_id, length, left)
            if read is None:
                return None
            length = read.end
            if read.final is not None:
                break
        return length

    async def owner(self, reply_id: str) -> str | None:
        writer = self._state.writers.get(reply_id)
        if writer is not None:
            return writer.owner
        try:
            first: Any = await self._state.client.xrange(self.key("reply", reply_id), count=1)
        except RedisError as exc:
            raise ReplyLogUnavailable() from exc
        return str(first[0][1].get("o", "")) if first else None

    async def read(self, reply_id: str, offset: int, timeout: float) -> LogRead | None:
        state = self._state
        writer = state.writers.get(reply_id)
        if writer is not None:  # generated here: read this worker's own copy
            return await writer.buffer.read(offset, timeout)
        client, key = state.client, self.key("reply", reply_id)
        try:
            await self._ensure_background(state)
            # Take the wake-up before looking, so text flushed in between is not missed.
            wake = state.waiters.get(reply_id)
            if wake is None:
                wake = state.waiters[reply_id] = asyncio.get_running_loop().create_future()
            cursor = self._cursors.pop((reply_id, offset), None)
            entries: Any = await client.xrange(key, min=f"({cursor}" if cursor else "-")
            if cursor is None and not entries:
                return None
            if entries:
                read = self._assemble(reply_id, entries, offset)
                if read.text or read.final is not None or timeout <= 0:
                    return read
                cursor = entries[-1][0]
            if await wait_done(wake, timeout):
                entries = await client.xrange(key, min=f"({cursor}")
                if entries:
                    return self._assemble(reply_id, entries, offset)
            if not await client.exists(key):
                return None
            if cursor is not None:
                self._remember(reply_id, offset, cursor)
            return LogRead((), offset)
        except RedisError as exc:
            raise ReplyLogUnavailable() from exc

    def _assemble(self, reply_id: str, entries: list[Any], offset: int) -> LogRead:
        pieces, end, final = [], offset, None
        for _, fields in entries:
            entry_end = int(fields["e"])
            if "f" in fields:
                final = json.loads(fields["f"])
            text = fields.get("t", "")
            if text and entry_end > offset:
                start = entry_end - len(text)
                kind = REASONING if fields.get("k") == "r" else ANSWER
                pieces.append(Part(kind, text[max(0, offset - start) :]))
                end = entry_end
        self._remember(reply_id, end, entries[-1][0])
        return LogRead(tuple(_merged(pieces)), end, final)

    def _remember(self, reply_id: str, offset: int, stream_id: str) -> None:
        self._cursors[(reply_id, offset)] = stream_id
        self._cursors.move_to_end((reply_id, offset))
        while len(self._cursors) > _CURSORS:
            self._cursors.popitem(last=False)

    async def aclose(self) -> None:
        state = self._states.pop(asyncio.get_running_loop(), None)
        if state is None:
            return
        tasks = [state.listener, state.heartbeat, state.flusher]
        for task in filter(None, tasks):
            task.cancel()
        await asyncio.gather(*filter(None, tasks), return_exceptions=True)
        await state.client.aclose()

    # --- the process's background work ------------------------------------------

    @property
    def _lease_ms(self) -> int:
        return int(self.lease_ttl * 1000)

    @property
    def _heartbeat_interval(self) -> float:
        return self.lease_ttl / 3

    async def _ensure_background(self, state: _LoopState) -> None:
        if state.listener is None:
            state.listener = asyncio.ensure_future(self._listen(state))
            state.heartbeat = asyncio.ensure_future(self._beat(state))
        if not state.subscribed.is_set():
            try:
                await asyncio.wait_for(state.subscribed.wait(), timeout=5)
            except TimeoutError:
                raise ReplyLogUnavailable() from None

    async def _listen(self, state: _LoopState) -> None:
        """Hear stop requests for every reply this process owns, reconnecting as needed."""
        while not cancel_requested():
            pubsub = state.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                state.subscribed.set()
                await self._check_missed_stops(state)
                self._wake_all(state)  # anything may have been flushed while we were away
                while not cancel_requested():
                    message = await pubsub.get_message(timeout=None)
                    if message is not None and message["type"] == "message":
                        self._dispatch(state, message["data"])
            except (RedisError, OSError) as exc:
                logger.warning("Stop subscription lost (%s); reconnecting.", exc)
                await asyncio.sleep(0.5)
            finally:
                await pubsub.aclose()

    def _dispatch(self, state: _LoopState, event: str) -> None:
        kind, _, reply_id = event.partition(":")
        if kind == "t":  # a batch names all the replies it wrote
            for written in reply_id.split(" "):
                wake = state.waiters.pop(written, None)
                if wake is not None:
                    settle(wake)
        elif kind == "s" and (writer := state.writers.get(reply_id)) is not None:
            settle(writer.stop)

    def _wake_all(self, state: _LoopState) -> None:
        for reply_id in list(state.waiters):
            self._dispatch(state, f"t:{reply_id}")

    async def _check_missed_stops(self, state: _LoopState) -> None:
        """Stops published while the subscription was down are still in their keys."""
        writers = list(state.writers.values())
        if writers:
            stops = await state.client.mget([self.key("stop", w.reply_id) for w in writers])
            for writer, stop in zip(writers, stops, strict=True):
                if stop:
                    settle(writer.stop)

    async def _beat(self, state: _LoopState) -> None:
        """Keep this process's leases alive while their fences are ours.

        A fence taken by someone else (this process stalled past the lease, and the
        reply was recovered) stops its generation: it learns here, at the latest.
        """
        while not cancel_requested():
            await asyncio.sleep(self._heartbeat_interval)
            writers = [w for w in state.writers.values() if not w.claimed]
            if not writers:
                continue
            try:
                keys = [key for w in writers for key in w.keys[2:0:-1]]  # lease, fence
                tokens = [w.token for w in writers]
                args: list[str | int | float] = [WORKER, self._lease_ms, _ORPHAN_TTL, *tokens]
                sent = asyncio.get_running_loop().time()
                held = await state.heartbeat_script(keys=keys, args=args)
                for writer, holds in zip(writers, held, strict=True):
                    if not holds:
                        writer.fenced_out()
                        continue
                    writer.confirmed = sent
            except RedisError as exc:
                logger.warning("Lease heartbeat failed: %s", exc)
