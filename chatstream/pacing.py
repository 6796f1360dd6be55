"""How long a reader lets text gather before it sends the next frame.

At light load a reader sends at most one frame per ``FLUSH_INTERVAL``. When the
process falls behind, which shows as its event loop waking late, readers wait
longer between frames, up to ``FLUSH_INTERVAL_MAX``: frames per second fall as
load rises, so the CPU goes to new replies' first tokens instead of to more,
smaller frames. A paced model's tokens then reach a reader a few at a time; the
page's typewriter keeps the visible pace smooth.

One sampler task per event loop measures the lag while readers are there and
stops when the last one leaves.
"""

from __future__ import annotations

import asyncio
import weakref

from chatstream import metrics

PERIOD = 0.1  # s between two lag samples
CALM = 0.01  # s of lag at or below which frames keep FLUSH_INTERVAL
BUSY = 0.1  # s of lag at which frames are FLUSH_INTERVAL_MAX apart
_DECAY = 0.8  # lag rises at once with a late wake-up and falls back over about a second


class LoopLag:
    """The event loop's recent lag: how late a timer of ``PERIOD`` fires."""

    def __init__(self) -> None:
        self.lag = 0.0
        self.readers = 0
        self.task: asyncio.Task[None] | None = None

    def __enter__(self) -> LoopLag:
        self.readers += 1
        if self.task is None:
            loop = asyncio.get_running_loop()
            self.task = loop.create_task(self.sample(), name="chatstream event-loop lag")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.readers -= 1
        if not self.readers and self.task is not None:
            self.task.cancel()
            self.task, self.lag = None, 0.0
            metrics.EVENT_LOOP_LAG.set(0.0)

    def note(self, late: float) -> None:
        late = max(0.0, late)
        self.lag = late if late > self.lag else self.lag * _DECAY + late * (1 - _DECAY)
        metrics.EVENT_LOOP_LAG.set(self.lag)

    async def sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            await asyncio.sleep(PERIOD)
            self.note(loop.time() - began - PERIOD)

    def interval(self, least: float, most: float) -> float:
        """The time between two frames now: ``least`` when calm, longer when busy.

        A reader wakes ``lag`` late, so its gap is the interval plus the lag: the
        interval leaves the lag room, and gaps stay within ``most`` while they can.
        """
        if most <= least or self.lag <= CALM:
            return least
        share = min(1.0, (self.lag - CALM) / (BUSY - CALM))
        return max(least, min(least + (most - least) * share, most - self.lag))


_gauges: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopLag] = weakref.WeakKeyDictionary()


def watched() -> LoopLag:
    """The running loop's lag gauge; sampled while any reader is inside ``with`` it.

    One per loop, and its own context manager: a reader keeps no object of its own.
    """
    loop = asyncio.get_running_loop()
    gauge = _gauges.get(loop)
    if gauge is None:
        gauge = _gauges[loop] = LoopLag()
    return gauge
