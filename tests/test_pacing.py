"""Adaptive pacing: a loaded process sends fewer, larger frames; a calm one as before."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from django.test import override_settings
from prometheus_client import REGISTRY

from chatstream import pacing
from chatstream.reading import Delta, Ending, follow
from chatstream.replylog import get_reply_log
from chatstream.replylog.base import ReplyWriter
from tests.settings import CHATSTREAM as BASE

TOKENS = [f"w{i} " for i in range(40)]
PACED = 0.05  # s between tokens: 20 tokens a second


async def write(writer: ReplyWriter, interval: float) -> None:
    for token in TOKENS:
        await asyncio.sleep(interval)
        await writer.append(token)
    await writer.close({"status": "complete"})


async def read(settings: dict[str, float]) -> list[Delta | Ending]:
    reply_id = str(uuid.uuid4())
    with override_settings(CHATSTREAM={**BASE, **settings}):
        writing = asyncio.create_task(write(await get_reply_log().open(reply_id), PACED))
        items = [item async for item in follow(reply_id, 0) if item is not None]
        await writing
    return items


async def hog(stop: asyncio.Event) -> None:
    """A busy process: the loop is held 80 ms out of every 90."""
    while not stop.is_set():
        time.sleep(0.08)  # noqa: ASYNC251 (blocking on purpose: that is the load)
        await asyncio.sleep(0.01)


def test_the_interval_is_the_least_when_calm_and_rises_with_lag_but_leaves_it_room() -> None:
    gauge = pacing.LoopLag()
    assert gauge.interval(0.05, 0.2) == 0.05
    gauge.note(pacing.CALM)
    assert gauge.interval(0.05, 0.2) == 0.05
    gauge.note((pacing.CALM + pacing.BUSY) / 2)
    assert gauge.interval(0.05, 0.2) == pytest.approx(0.125)
    gauge.note(pacing.BUSY)
    assert gauge.interval(0.05, 0.2) == pytest.approx(0.1)  # the wake-up adds the lag
    gauge.note(pacing.BUSY * 4)
    assert gauge.interval(0.05, 0.2) == 0.05  # the lag alone spaces the frames
    assert gauge.interval(0.05, 0.0) == 0.05  # a most below the least turns pacing off


def test_lag_rises_at_once_and_falls_back_gradually() -> None:
    gauge = pacing.LoopLag()
    gauge.note(0.1)
    assert gauge.lag == 0.1
    gauge.note(0.0)
    assert 0.0 < gauge.lag < 0.1
    for _ in range(40):
        gauge.note(0.0)
    assert gauge.lag < pacing.CALM


async def test_a_loaded_loop_merges_paced_tokens_into_fewer_frames_and_loses_none() -> None:
    stop = asyncio.Event()
    hogging = asyncio.create_task(hog(stop))
    try:
        items = await asyncio.wait_for(
            read({"FLUSH_INTERVAL": 0.02, "FLUSH_INTERVAL_MAX": 0.25}), 60
        )
    finally:
        stop.set()
        await hogging
    deltas = [item for item in items if isinstance(item, Delta)]
    assert "".join(d.text for d in deltas) == "".join(TOKENS)
    assert [d.end for d in deltas] == sorted({d.end for d in deltas})
    assert isinstance(items[-1], Ending) and items[-1].end == len("".join(TOKENS))
    # At 20 tokens a second and frames up to 250 ms apart, most frames carry several.
    assert len(deltas) <= len(TOKENS) * 0.6
    # The last reader left: no sampler, and the gauge says so.
    assert REGISTRY.get_sample_value("chatstream_event_loop_lag_seconds") == 0.0


async def test_the_same_load_with_pacing_off_sends_a_frame_per_token() -> None:
    stop = asyncio.Event()
    hogging = asyncio.create_task(hog(stop))
    try:
        items = await asyncio.wait_for(read({"FLUSH_INTERVAL": 0, "FLUSH_INTERVAL_MAX": 0}), 60)
    finally:
        stop.set()
        await hogging
    deltas = [item for item in items if isinstance(item, Delta)]
    assert "".join(d.text for d in deltas) == "".join(TOKENS)
    assert len(deltas) > len(TOKENS) * 0.6


async def test_the_sampler_runs_only_while_readers_follow() -> None:
    loop = asyncio.get_running_loop()
    with pacing.watched() as first, pacing.watched() as second:
        assert first is second and first.task is not None and not first.task.done()
        task = first.task
    await asyncio.sleep(0)
    assert task.cancelled() and first.task is None
    assert pacing._gauges[loop].readers == 0
