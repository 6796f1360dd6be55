"""One asyncio task per assistant reply: provider -> reply log, checkpoints, finalise once.

A generation does not belong to any connection: readers (SSE responses, WebSocket
consumers) come and go through the reply log. The Message row is written O(1)
times: created by the view, checkpointed at most every ``CHECKPOINT_INTERVAL``
seconds, and finalised by a conditional UPDATE (``WHERE status = 'streaming'``)
that succeeds exactly once whoever attempts it, so ``reply_finished`` fires once
per reply whatever way it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.db import connections
from django.utils import timezone

from chatstream import dbpool, limits, shutdown
from chatstream.conf import ChatstreamSettings, get_settings
from chatstream.connections import get_provider
from chatstream.exceptions import TokenQuotaExceeded, UpstreamError
from chatstream.models import Message, Status
from chatstream.providers.base import ChatRequest, Usage
from chatstream.replylog import ReplyLog, get_reply_log
from chatstream.serializers import message_payload
from chatstream.signals import reply_finished
from chatstream.tokens import estimate_messages, estimate_tokens, tokens_for_length

logger = logging.getLogger(__name__)

_MERGE_EVERY = 64
_PAUSE_EVERY = 0.05  # seconds of upstream reading between two yields to the loop
_WATCH_GRACE = 1.0  # seconds a cancelled stop-watcher may take to end


@dataclass(frozen=True)
class ReplySpec:
    """Everything a generation needs, gathered by the view before the 201 is sent."""

    reply_id: str
    connection: str
    request: ChatRequest
    owner_key: str = ""
    #: Tokens this reply may use before it is stopped (the owner's daily quota left).
    token_budget: int | None = None


@dataclass
class _Outcome:
    status: Status
    error_code: str = ""
    error_message: str = ""


@dataclass
class _Progress:
    parts: list[str] = field(default_factory=list)
    length: int = 0
    ttft_ms: int | None = None
    finish_reason: str | None = None
    usage: Usage | None = None

    sealed: int = 0

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)
        if len(self.parts) - self.sealed >= _MERGE_EVERY:
            # Blocks, not one object per token: a long reply costs about its own size.
            self.parts[self.sealed :] = ["".join(self.parts[self.sealed :])]
            self.sealed += 1

    @property
    def text(self) -> str:
        return "".join(self.parts)


def final_record(message: Message) -> dict[str, Any]:
    """The log's last record: what ``done`` (and ``error``) events say."""
    payload = message_payload(message)
    return {
        "status": message.status,
        "finish_reason": payload["finish_reason"],
        "usage": payload["usage"],
        "error": payload["error"],
        "message": payload,
    }


def _checkpoint_row(reply_id: str, text: str) -> None:
    Message.objects.filter(pk=reply_id, status=Status.STREAMING).update(content=text)


def _finalise_row(reply_id: str, fields: Mapping[str, Any]) -> tuple[Message | None, bool]:
    """Finalise the row unless someone already did; returns (message, whether we did)."""
    # The conversation's updated_at moved when the turn began: no second write here.
    won = Message.objects.filter(pk=reply_id, status=Status.STREAMING).update(**fields)
    try:
        message = Message.objects.select_related("conversation").get(pk=reply_id)
    except Message.DoesNotExist:  # its conversation was deleted
        return None, False
    return message, bool(won)


async def finalise(reply_id: str, fields: Mapping[str, Any], log: ReplyLog) -> Message | None:
    """Persist the ending once, tell the log's readers, and fire ``reply_finished``."""
    message, won = await sync_to_async(_finalise_row)(reply_id, fields)
    if message is not None:
        await log.finish(reply_id, final_record(message))
    if won and message is not None:
        line = {
            "reply": reply_id,
            "assistant": message.assistant_id,
            "model": message.model,
            "status": message.status,
            "finish_reason": message.finish_reason or None,
            "prompt_tokens": message.prompt_tokens,
            "completion_tokens": message.completion_tokens,
            "estimated": message.usage_estimated,
            "ttft_ms": message.ttft_ms,
            "duration_ms": message.duration_ms,
            "error": message.error_code or None,
        }
        # One line per reply, never its text: operators grep and parse these.
        logger.info("reply finished %s", json.dumps(line), extra={"chatstream": line})
        for receiver, result in await reply_finished.asend_robust(sender=Message, message=message):
            if isinstance(result, Exception):
                logger.error("reply_finished receiver %r failed", receiver, exc_info=result)
    return message


async def recover(reply_id: str, log: ReplyLog | None = None) -> Message | None:
    """Finalise a reply whose generation died as ``interrupted``, keeping all known text.

    A no-op (returning ``None``) while a live generation still owns it.
    """
    log = log or get_reply_log()
    if await log.is_alive(reply_id):
        return None
    fields: dict[str, Any] = {"status": Status.INTERRUPTED, "finished_at": timezone.now()}
    read = await log.read(reply_id, 0, 0)
    if read is not None and read.text:
        fields["content"] = read.text
    return await finalise(reply_id, fields, log)


class Generation:
    def __init__(self, spec: ReplySpec, log: ReplyLog, settings: ChatstreamSettings) -> None:
        self.spec = spec
        self.log = log
        self.settings = settings
        self.progress = _Progress()
        self._saved: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._saved.set_result(None)

    async def run(self) -> None:
        """The task's body: its own thread-sensitive context, its DB connection closed after."""
        async with ThreadSensitiveContext():
            try:
                await self._run()
            finally:
                await sync_to_async(connections.close_all)()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        consume = asyncio.ensure_future(self._consume(started))
        watch = asyncio.ensure_future(self._watch())
        shutting_down = False
        try:
            await asyncio.wait({consume, watch}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            shutting_down = True
            raise
        finally:
            consume_finished = consume.done() and not consume.cancelled()
            for task in (consume, watch):
                task.cancel()
            # Awaiting the cancelled consumer closes the provider stream, and so the upstream.
            # The watcher gets a moment to go, never the power to hold up the finalising.
            await asyncio.gather(consume, self._saved, return_exceptions=True)
            await asyncio.wait({watch}, timeout=_WATCH_GRACE)
            if shutting_down:
                outcome = _Outcome(Status.INTERRUPTED)
            elif consume_finished:
                outcome = self._outcome(consume)
            else:
                outcome = _Outcome(Status.STOPPED)
            await self._finalise(outcome, duration=loop.time() - started)

    async def _watch(self) -> None:
        """Return when the reply must stop: asked to, or abandoned under the cancel policy."""
        if self.settings.disconnect_policy != "cancel":
            return await self.log.wait_stop(self.spec.reply_id)  # no second task per reply
        stop = asyncio.ensure_future(self.log.wait_stop(self.spec.reply_id))
        loop, grace = asyncio.get_running_loop(), self.settings.disconnect_grace
        alone_since: float | None = None
        try:
            while not stop.done():
                await asyncio.wait({stop}, timeout=min(1.0, max(grace / 4, 0.05)))
                if await self.log.readers(self.spec.reply_id) > 0:
                    alone_since = None
                elif alone_since is None:
                    alone_since = loop.time()
                elif loop.time() - alone_since >= grace:
                    return
        finally:
            stop.cancel()
            await asyncio.gather(stop, return_exceptions=True)

    def _outcome(self, consume: asyncio.Future[None]) -> _Outcome:
        exc = consume.exception()
        if isinstance(exc, UpstreamError):
            return _Outcome(Status.ERROR, exc.code, exc.message)
        if isinstance(exc, TokenQuotaExceeded):
            return _Outcome(Status.STOPPED, exc.code, exc.message)
        if exc is not None:
            logger.error("Reply %s failed", self.spec.reply_id, exc_info=exc)
            return _Outcome(Status.ERROR, "internal_error", "The reply failed on the server.")
        if self.progress.finish_reason is None:
            return _Outcome(
                Status.ERROR,
                "upstream_incomplete",
                "The model's server ended the reply before it was finished.",
            )
        return _Outcome(Status.COMPLETE)

    async def _consume(self, started: float) -> None:
        loop = asyncio.get_running_loop()
        provider = get_provider(self.spec.connection, self.settings)
        progress, interval = self.progress, self.settings.checkpoint_interval
        budget = self.spec.token_budget
        if budget is not None:
            budget -= estimate_messages(self.spec.request.messages)
        last_checkpoint = last_pause = started
        async with contextlib.aclosing(provider.stream(self.spec.request)) as chunks:
            async for chunk in chunks:
                now = loop.time()
                if now - last_pause >= _PAUSE_EVERY:
                    # A fast upstream's buffered chunks never suspend this loop: let
                    # readers run, so they stream instead of getting it all at the end.
                    last_pause = now
                    await asyncio.sleep(0)
                if chunk.text:
                    if progress.ttft_ms is None:
                        progress.ttft_ms = round((now - started) * 1000)
                    progress.add(chunk.text)
                    await self.log.append(self.spec.reply_id, chunk.text)
                    if budget is not None and tokens_for_length(progress.length) > budget:
                        raise TokenQuotaExceeded()
                if chunk.finish_reason is not None:
                    progress.finish_reason = chunk.finish_reason
                if chunk.usage is not None:
                    progress.usage = chunk.usage
                if interval and now - last_checkpoint >= interval and self._saved.done():
                    # In the background: a slow database never holds up the tokens.
                    last_checkpoint = now
                    self._saved = asyncio.ensure_future(self._checkpoint())

    async def _checkpoint(self) -> None:
        """Save the text so far; a failure waits for the next one (the log has the text)."""
        try:
            await dbpool.run(_checkpoint_row, self.spec.reply_id, self.progress.text)
        except Exception as exc:
            logger.warning("Checkpoint of reply %s failed: %s", self.spec.reply_id, exc)

    async def _finalise(self, outcome: _Outcome, duration: float) -> None:
        progress, text = self.progress, self.progress.text
        usage, estimated = progress.usage, False
        if usage is None:
            prompt = estimate_messages(self.spec.request.messages)
            usage, estimated = Usage(prompt, estimate_tokens(text)), True
        fields = {
            "content": text,
            "status": outcome.status,
            "finish_reason": progress.finish_reason or "",
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "usage_estimated": estimated,
            "ttft_ms": progress.ttft_ms,
            "duration_ms": round(duration * 1000),
            "error_code": outcome.error_code,
            "error_message": outcome.error_message,
            "finished_at": timezone.now(),
        }
        try:
            await finalise(self.spec.reply_id, fields, self.log)
        except Exception:
            logger.exception("Could not finalise reply %s", self.spec.reply_id)
        # Whoever finalised the row, these tokens were spent by this generation.
        if self.settings.daily_token_quota:
            total = usage.prompt_tokens + usage.completion_tokens
            await sync_to_async(limits.record_tokens)(self.spec.owner_key, total, self.settings)


class GenerationRegistry:
    """Owns this process's generation tasks: starts them, and cancels them at shutdown."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self, spec: ReplySpec) -> None:
        """Open the reply's log, then run it; the log exists before this returns."""
        settings = get_settings()
        log = get_reply_log()
        await log.open(spec.reply_id, spec.owner_key)
        generation = Generation(spec, log, settings)
        # A fresh context: the request's thread-sensitive context would otherwise pin
        # the task's ORM calls to a thread (and DB connection) that outlives the request.
        task = asyncio.get_running_loop().create_task(
            generation.run(),
            name=f"chatstream-reply-{spec.reply_id}",
            context=contextvars.Context(),
        )
        self._tasks[spec.reply_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(spec.reply_id, None))
        shutdown.install(lambda: self.shutdown(settings.shutdown_grace))

    async def wait(self, reply_id: str, timeout: float | None = None) -> None:
        """Wait for a reply of this process to end (tests, shutdown)."""
        task = self._tasks.get(reply_id)
        if task is not None:
            await asyncio.wait({task}, timeout=timeout)

    async def shutdown(self, timeout: float) -> None:
        """Finalise every running reply as ``interrupted``; waits at most ``timeout``."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)


registry = GenerationRegistry()
