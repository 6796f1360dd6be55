"""One asyncio task per assistant reply: provider -> reply log, checkpoints, its ending.

A generation does not belong to any connection: readers (SSE responses, WebSocket
consumers) come and go through the reply log. The Message row is written O(1)
times: created by the view, checkpointed at most every ``CHECKPOINT_INTERVAL``
seconds, and finalised once by ``chatstream.ending.Ending``, whose exit ends the
reply whatever way the generation went.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
from dataclasses import dataclass
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.db import connections

from chatstream import dbpool, ending, limits, metrics, shutdown
from chatstream.conf import ChatstreamSettings, get_settings
from chatstream.connections import get_provider
from chatstream.exceptions import (
    CostLimitExceeded,
    LeaseLost,
    ReplyLogUnavailable,
    TokenQuotaExceeded,
    UpstreamError,
)
from chatstream.models import Message, Status
from chatstream.pricing import Price, cost_fields
from chatstream.providers.base import ChatRequest, Usage
from chatstream.replylog import get_reply_log
from chatstream.replylog.base import ANSWER, REASONING, ReplyWriter
from chatstream.signals import reply_finished
from chatstream.text import storable
from chatstream.tokens import estimate_tokens, tokens_for_length

logger = logging.getLogger(__name__)

_PAUSE_EVERY = 0.05  # seconds of upstream reading between two yields to the loop
_WATCH_GRACE = 1.0  # seconds a cancelled stop-watcher may take to end


@dataclass(frozen=True)
class ReplySpec:
    """Everything a generation keeps, gathered by the view before the 201 is sent.

    Not the request: its history is handed to the provider and let go once sent.
    """

    reply_id: str
    connection: str
    model: str
    #: The history's estimated tokens: the prompt's usage when the model reports none.
    prompt_tokens: int
    #: The reply's row as created: its ending tells ``done`` from it while the database
    #: does not answer, and needs no read-back once it has finalised it.
    row: Message
    owner_key: str = ""
    #: Tokens this reply may use before it is stopped (the owner's daily quota left).
    token_budget: int | None = None
    #: The model's price (the reply's cost is computed when it ends), and the owner's
    #: money left today as output tokens (the reply stops past it).
    price: Price | None = None
    cost_budget: int | None = None


def _checkpoint_row(reply_id: str, fields: dict[str, Any]) -> None:
    ending.write_streaming(reply_id, fields)


class Generation:
    def __init__(
        self,
        spec: ReplySpec,
        request: ChatRequest,
        writer: ReplyWriter,
        settings: ChatstreamSettings,
    ) -> None:
        self.spec = spec
        self._request: ChatRequest | None = request
        self.writer = writer
        self.settings = settings
        self.ttft_ms: int | None = None
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        #: The checkpoint being written, if one is.
        self._saved: asyncio.Future[None] | None = None

    async def run(self) -> None:
        """The task's body. Its database work runs on ``dbpool``; the thread-sensitive
        context is for ``reply_finished``'s sync receivers (no thread unless one runs)."""
        async with ThreadSensitiveContext():
            try:
                reply = ending.Ending(
                    self.writer, row=self.spec.row, finalise_retry=self.settings.finalise_retry
                )
                started = asyncio.get_running_loop().time()
                try:
                    async with reply:
                        try:
                            reply.outcome = await self._race(started)
                        finally:
                            reply.fields.update(self._fields(started))
                finally:
                    await self._count_spending(reply.fields)
                    # A checkpoint still waiting on the database writes nothing once the
                    # reply is final; it never holds up the ending, only the task's end.
                    if self._saved is not None:
                        await asyncio.gather(self._saved, return_exceptions=True)
            finally:
                if reply_finished.has_listeners(Message):
                    # Its sync receivers ran on this context's thread: close what they opened.
                    await sync_to_async(connections.close_all)()

    async def _race(self, started: float) -> ending.Outcome:
        """Read the model until it ends or the reply must stop; how it ended.

        The model is read in this task, and a stop cancels it: one task and its frames
        fewer per open reply than racing a reading task against the watcher.
        """
        task, loop = asyncio.current_task(), asyncio.get_running_loop()
        assert task is not None
        watch: asyncio.Future[None]
        if self.settings.disconnect_policy == "cancel":
            watch = asyncio.ensure_future(self._watch())
        else:  # the log's own future, most often: no task per reply
            watch = self.writer.stop_signal()
        stopped_at: float | None = None  # when the reply had to stop, if it did
        reading = True

        def stop(_: asyncio.Future[None]) -> None:
            nonlocal stopped_at
            # Not once reading is over: the watcher may end just after, its callback queued.
            if reading and not watch.cancelled():
                stopped_at = loop.time()
                task.cancel()

        watch.add_done_callback(stop)
        failure: BaseException | None = None
        try:
            # Leaving this (cancelled or not) closes the provider stream, and so the upstream.
            await self._consume(started)
        except asyncio.CancelledError:
            if stopped_at is None or task.uncancel() > 0:
                raise  # cancelled from outside too: shutdown's business, not a stop
            metrics.STOP_TO_UPSTREAM_CLOSED.observe(loop.time() - stopped_at)
            return ending.Outcome(Status.STOPPED)
        except Exception as exc:
            failure = exc
        finally:
            reading = False
            watch.remove_done_callback(stop)
            watch.cancel()
            # A watching task gets a moment to go, never the power to hold up the ending.
            await asyncio.wait({watch}, timeout=_WATCH_GRACE)
        return self._outcome(failure)

    async def _watch(self) -> None:
        """Return when the reply must stop: asked to, fenced out, or abandoned by its readers."""
        stop = self.writer.stop_signal()
        loop, grace = asyncio.get_running_loop(), self.settings.disconnect_grace
        alone_since: float | None = None
        try:
            while not stop.done():
                await asyncio.wait({stop}, timeout=min(1.0, max(grace / 4, 0.05)))
                try:
                    followed = await get_reply_log().readers(self.spec.reply_id) > 0
                except ReplyLogUnavailable:
                    followed = True  # unknown while the log is away: never a reason to stop
                if followed:
                    alone_since = None
                elif alone_since is None:
                    alone_since = loop.time()
                elif loop.time() - alone_since >= grace:
                    return
        finally:
            stop.cancel()
            await asyncio.gather(stop, return_exceptions=True)

    def _outcome(self, exc: BaseException | None) -> ending.Outcome:
        if isinstance(exc, UpstreamError):
            metrics.UPSTREAM_ERRORS.labels(code=exc.code).inc()
            return ending.Outcome(Status.ERROR, exc.code, exc.message)
        if isinstance(exc, TokenQuotaExceeded | CostLimitExceeded):
            return ending.Outcome(Status.STOPPED, exc.code, exc.message)
        if isinstance(exc, LeaseLost):
            return ending.Outcome(Status.STOPPED)  # written by nobody: the ending is fenced
        if exc is not None:
            logger.error("Reply %s failed", self.spec.reply_id, exc_info=exc)
            return ending.Outcome(Status.ERROR, "internal_error", "The reply failed on the server.")
        if self.finish_reason is None:
            metrics.UPSTREAM_ERRORS.labels(code="upstream_incomplete").inc()
            return ending.Outcome(
                Status.ERROR,
                "upstream_incomplete",
                "The model's server ended the reply before it was finished.",
            )
        return ending.Outcome(Status.COMPLETE)

    async def _consume(self, started: float) -> None:
        loop = asyncio.get_running_loop()
        provider = get_provider(self.spec.connection, self.settings)
        writer, buffer, interval = (
            self.writer,
            self.writer.buffer,
            self.settings.checkpoint_interval,
        )
        budget = self.spec.token_budget
        if budget is not None:
            budget -= self.spec.prompt_tokens
        request, self._request = self._request, None
        assert request is not None, "a generation runs once"
        last_checkpoint = last_pause = started
        async with contextlib.aclosing(provider.stream(request)) as chunks:
            del request  # the provider lets the history go once it is sent: so do we
            async for chunk in chunks:
                now = loop.time()
                if now - last_pause >= _PAUSE_EVERY:
                    # A fast upstream's buffered chunks never suspend this loop: let
                    # readers run, so they stream instead of getting it all at the end.
                    last_pause = now
                    await asyncio.sleep(0)
                if chunk.reasoning or chunk.text:
                    if self.ttft_ms is None:
                        self.ttft_ms = round((now - started) * 1000)
                    # What the database cannot store is replaced before anyone reads it.
                    if chunk.reasoning:
                        await writer.append(storable(chunk.reasoning), REASONING)
                    if chunk.text:
                        await writer.append(storable(chunk.text), ANSWER)
                    spent = tokens_for_length(buffer.length)
                    if budget is not None and spent > budget:
                        raise TokenQuotaExceeded()
                    if self.spec.cost_budget is not None and spent > self.spec.cost_budget:
                        raise CostLimitExceeded()
                if chunk.finish_reason is not None:
                    self.finish_reason = chunk.finish_reason
                if chunk.usage is not None:
                    self.usage = chunk.usage
                if interval and now - last_checkpoint >= interval and self._saved is None:
                    # In the background: a slow database never holds up the tokens.
                    last_checkpoint = now
                    self._saved = asyncio.ensure_future(self._checkpoint())

    async def _checkpoint(self) -> None:
        """Save the text so far; a failure waits for the next one (the log has the text)."""
        fields = ending.text_fields(self.writer.buffer.after(0))
        try:
            await dbpool.run(_checkpoint_row, self.spec.reply_id, fields)
        except Exception as exc:
            logger.warning("Checkpoint of reply %s failed: %s", self.spec.reply_id, exc)
        finally:
            self._saved = None

    def _fields(self, started: float) -> dict[str, Any]:
        """The row's final fields but its status, from what the reply got to."""
        fields = ending.text_fields(self.writer.buffer.after(0))
        usage, estimated = self.usage, False
        if usage is None:
            spent = estimate_tokens(fields["content"]) + estimate_tokens(fields["reasoning"])
            usage, estimated = Usage(self.spec.prompt_tokens, spent), True
        duration = asyncio.get_running_loop().time() - started
        fields.update(
            finish_reason=self.finish_reason or "",
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cached_tokens=usage.cached_tokens,
            usage_estimated=estimated,
            ttft_ms=self.ttft_ms,
            duration_ms=round(duration * 1000),
        )
        return {**fields, **cost_fields(self.spec.price, fields)}

    async def _count_spending(self, fields: dict[str, Any]) -> None:
        # Whoever finalised the row, these tokens (and this money) were spent here.
        settings, owner = self.settings, self.spec.owner_key
        if settings.daily_token_quota and fields.get("prompt_tokens") is not None:
            total = fields["prompt_tokens"] + fields["completion_tokens"]
            await dbpool.run(limits.record_tokens, owner, total, settings)
        if settings.daily_cost_limit and fields.get("cost"):
            await dbpool.run(limits.record_cost, owner, fields["cost"], settings)


class GenerationRegistry:
    """Owns this process's tasks: generations, and the sweep for orphaned replies.

    Both are cancelled at shutdown.
    """

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def ensure_sweeping(self) -> None:
        """Start this process's sweep (at once, then every ``SWEEP_INTERVAL``) if not yet.

        Called by the first request: recovery after a restart then runs beside it,
        never in front of it.
        """
        sweeper = self._sweeper
        loop = asyncio.get_running_loop()
        if sweeper is not None and not sweeper.done() and sweeper.get_loop() is loop:
            return
        interval = get_settings().sweep_interval
        if interval:
            self._sweeper = loop.create_task(
                self._sweep(interval), name="chatstream-sweep", context=contextvars.Context()
            )

    async def _sweep(self, interval: float) -> None:
        async with ThreadSensitiveContext():
            while True:
                try:
                    ids = await dbpool.run(ending.orphan_candidates)
                    ids = [reply_id for reply_id in ids if reply_id not in self._tasks]
                    if ids and (done := await ending.recover_all(ids)):
                        logger.info("Recovered %s orphaned replies.", done)
                except Exception as exc:  # the database or the log is away: next time
                    logger.warning("Sweep for orphaned replies failed: %s", exc)
                await asyncio.sleep(interval)

    async def start(self, spec: ReplySpec, request: ChatRequest) -> None:
        """Open the reply's log, then run it; the log exists before this returns."""
        settings = get_settings()
        writer = await get_reply_log().open(spec.reply_id, spec.owner_key)
        generation = Generation(spec, request, writer, settings)
        # A fresh context: the request's thread-sensitive context would otherwise pin
        # the task's ORM calls to a thread (and DB connection) that outlives the request.
        # Its end runs there too, rather than in a copy of the request's context.
        context = contextvars.Context()
        task = asyncio.get_running_loop().create_task(
            generation.run(), name=f"chatstream-reply-{spec.reply_id}", context=context
        )
        self._tasks[spec.reply_id] = task
        metrics.REPLIES_STARTED.labels(model=spec.model).inc()
        metrics.REPLIES_LIVE.inc()
        task.add_done_callback(functools.partial(self._ended, spec.reply_id), context=context)
        shutdown.install(lambda: self.shutdown(settings.shutdown_grace))

    def _ended(self, reply_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(reply_id, None)
        metrics.REPLIES_LIVE.dec()

    async def wait(self, reply_id: str, timeout: float | None = None) -> None:
        """Wait for a reply of this process to end (tests, shutdown)."""
        task = self._tasks.get(reply_id)
        if task is not None:
            await asyncio.wait({task}, timeout=timeout)

    async def shutdown(self, timeout: float) -> None:
        """Finalise every running reply as ``interrupted``; waits at most ``timeout``."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)


registry = GenerationRegistry()
