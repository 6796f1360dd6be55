"""Prometheus metrics: every metric chatstream keeps, in this process's default registry.

Each worker process counts its own and is scraped as a target of its own (the
demo project serves them at ``/metrics``); Prometheus sums across workers. That is
deliberately not ``prometheus_client``'s multiprocess mode: chatstream's workers
are independent server processes, on any number of machines, with no parent to
share a directory or to clean up after a dead one (see README: Metrics).

Labels are closed sets: ``model`` comes from the operator's configuration (its
connections and assistants), ``status`` from ``Status``, ``code`` from the codes
chatstream's providers give upstream failures. No ids, no user names.

Instrumentation sits where things happen, one line each: a reply's start
(``generation``), its end once per reply (``ending.announce`` calls
``count_reply``), each frame a reader sends (``reading``), each reply-log flush
(``replylog.redis``), the admission queue (``project.admission``). Nothing is
recorded per token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from chatstream.models import Message

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# --- replies ----------------------------------------------------------------------

REPLIES_STARTED = Counter(
    "chatstream_replies_started_total", "Replies whose generation started here.", ["model"]
)
REPLIES_FINISHED = Counter(
    "chatstream_replies_finished_total",
    "Replies finalised here (once per reply, by whoever wrote its final row).",
    ["model", "status"],
)
EVENT_LOOP_LAG = Gauge(
    "chatstream_event_loop_lag_seconds",
    "How late this process's event loop wakes, while readers follow replies (pacing).",
)
REPLIES_LIVE = Gauge("chatstream_replies_live", "Replies generating in this process now.")
TIME_TO_FIRST_TOKEN = Histogram(
    "chatstream_time_to_first_token_seconds",
    "From a reply's start to its first text (reasoning or answer).",
    ["model"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0),
)
REPLY_DURATION = Histogram(
    "chatstream_reply_duration_seconds",
    "From a reply's start to its end, whatever the end.",
    ["model"],
    buckets=(0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)
STOP_TO_UPSTREAM_CLOSED = Histogram(
    "chatstream_stop_to_upstream_closed_seconds",
    "From the generation learning it must stop to its provider stream being closed.",
    buckets=_FAST,
)
UPSTREAM_ERRORS = Counter(
    "chatstream_upstream_errors_total", "Replies ended by the model's server failing.", ["code"]
)
FINALISE_RETRIES = Counter(
    "chatstream_finalise_retries_total", "Retries of a reply's final row write."
)

# Usage as reported by the model's server (estimated when it reported none).
PROMPT_TOKENS = Counter("chatstream_prompt_tokens_total", "Prompt tokens.", ["model"])
COMPLETION_TOKENS = Counter(
    "chatstream_completion_tokens_total", "Completion tokens, reasoning included.", ["model"]
)
REASONING_TOKENS = Counter(
    "chatstream_reasoning_tokens_total", "Completion tokens spent reasoning.", ["model"]
)
CACHED_TOKENS = Counter(
    "chatstream_cached_tokens_total", "Prompt tokens served from the prompt cache.", ["model"]
)

# --- readers ----------------------------------------------------------------------

READERS_LIVE = Gauge(
    "chatstream_readers_live", "Readers (SSE responses, WebSocket followers) following a reply."
)
FRAME_GAP = Histogram(
    "chatstream_reader_frame_gap_seconds",
    "Time between two text frames sent to one reader.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

# --- the reply log (Redis) --------------------------------------------------------

REPLY_LOG_FLUSH = Histogram(
    "chatstream_reply_log_flush_seconds",
    "One write of reply text to Redis: a batch of the worker's replies, or a reply's last.",
    buckets=_FAST,
)
REPLY_LOG_FLUSH_FAILURES = Counter(
    "chatstream_reply_log_flush_failures_total",
    "Flushes to Redis that failed (Redis unavailable); their text is kept and retried.",
)

# --- the demo project's admission queue -------------------------------------------

ADMISSION_QUEUE = Gauge(
    "chatstream_admission_queue_length", "HTTP requests waiting for a place in Django."
)
ADMISSION_WAIT = Histogram(
    "chatstream_admission_wait_seconds",
    "How long an HTTP request waited for a place in Django (0 when one was free).",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


def count_reply(message: Message) -> None:
    """Count one finished reply; called once per reply, by whoever finalised its row."""
    model = message.model
    REPLIES_FINISHED.labels(model=model, status=message.status).inc()
    if message.ttft_ms is not None:
        TIME_TO_FIRST_TOKEN.labels(model=model).observe(message.ttft_ms / 1000)
    if message.duration_ms is not None:
        REPLY_DURATION.labels(model=model).observe(message.duration_ms / 1000)
    for counter, tokens in (
        (PROMPT_TOKENS, message.prompt_tokens),
        (COMPLETION_TOKENS, message.completion_tokens),
        (REASONING_TOKENS, message.reasoning_tokens),
        (CACHED_TOKENS, message.cached_tokens),
    ):
        if tokens:
            counter.labels(model=model).inc(tokens)
