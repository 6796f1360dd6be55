"""Response classes: the event-stream response and JSON errors."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from asgiref.sync import SyncToAsync
from django.http import JsonResponse, StreamingHttpResponse

from chatstream.exceptions import ChatstreamError, MethodNotAllowed, RateLimited


class EventStreamResponse(StreamingHttpResponse):
    """A ``text/event-stream`` response that closes its generator on disconnect.

    Django 5.2 cancels the response task when the client goes, but does not close
    the view's async generator, so its ``finally`` would wait for garbage
    collection. Wrapping middleware may replace ``streaming_content``, so we keep
    our own reference to the generator we must close.

    Once the body streams, the request's worker thread has nothing left to do:
    it is let go rather than kept idle for the minutes a stream may stay open. What
    the request still does on a thread once the stream ends (``close()``, with
    ``request_finished``) runs on one thread that every stream shares, rather than
    on a new thread per stream, and leaves no thread for the request's end to join.
    A ``request_finished`` receiver that blocks holds up every stream's end.
    """

    def __init__(self, events: AsyncGenerator[bytes, None], **kwargs: Any) -> None:
        super().__init__(events, content_type="text/event-stream; charset=utf-8", **kwargs)
        self._events = events
        self["Cache-Control"] = "no-cache"
        self["X-Accel-Buffering"] = "no"

    async def __aiter__(self) -> AsyncIterator[bytes]:
        release_request_thread()
        if getattr(self, "_iterator", None) is self._events:  # where Django keeps it
            # Not wrapped by middleware: ours, bytes already, without Django's wrapping
            # generator (and its closure) kept for as long as the stream is open.
            content = self._events
        else:
            # Ours is async (wrapping middleware keeps it so under ASGI): it has aclose().
            content = cast(AsyncGenerator[bytes, None], self.streaming_content)
        try:
            async for part in content:
                yield part
        finally:
            await content.aclose()
            await self._events.aclose()
            _lend_closer()

    def close(self) -> None:
        try:
            super().close()
        finally:  # the shared thread is not the request's: nothing for its end to join
            context = SyncToAsync.thread_sensitive_context.get(None)
            executors = SyncToAsync.context_to_thread_executor
            if context is not None and executors.get(context) is _CLOSER:
                del executors[context]


def release_request_thread() -> None:
    """Shut down the idle worker thread of the current request's thread-sensitive context.

    Django's ASGI handler gives each request a ``ThreadSensitiveContext``, whose
    worker thread lives as long as the request: for a stream that is one idle
    thread (and its stack) per open connection. A later sync call in the same
    request (closing the response, say) starts a new thread as needed.
    """
    context = SyncToAsync.thread_sensitive_context.get(None)
    if context is None or getattr(context, "_executor", None) is not None:
        return  # no context, or one whose executor belongs to its creator
    executor = SyncToAsync.context_to_thread_executor.pop(context, None)
    if executor is not None:
        executor.shutdown(wait=False)


class _SharedExecutor(ThreadPoolExecutor):
    """An executor that asgiref may hand back at a request's end without stopping it."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stays up: every stream's request shares it for as long as the process runs."""


_CLOSER = _SharedExecutor(max_workers=1, thread_name_prefix="chatstream-close")


def _lend_closer() -> None:
    """Sends the request's remaining thread-sensitive calls to the shared thread, unless
    the request got a thread of its own again meanwhile."""
    context = SyncToAsync.thread_sensitive_context.get(None)
    if context is not None and getattr(context, "_executor", None) is None:
        SyncToAsync.context_to_thread_executor.setdefault(context, _CLOSER)


class JsonErrorResponse(JsonResponse):
    """``{"error": {"code", "message"}}`` with the error's status (and its headers)."""

    def __init__(self, error: ChatstreamError) -> None:
        super().__init__({"error": error.as_dict()}, status=error.status)
        if isinstance(error, MethodNotAllowed):
            self["Allow"] = ", ".join(error.allowed)
        if isinstance(error, RateLimited):
            self["Retry-After"] = str(error.retry_after)
