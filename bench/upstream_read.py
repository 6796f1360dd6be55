"""CPU of the upstream read alone: chatstream's OpenAI provider and nothing else.

``--streams`` replies (starts spread over a second) from the bench's fake upstream,
read through ``OpenAIProvider.stream``: the SDK's request, its aiohttp transport and
chatstream's parser, with no log, reader, database or server around them. Two
figures, each the median of ``--rounds`` rounds run alternately:

- a one-token reply's CPU: what opening the request costs (the SDK, httpx2 and
  aiohttp's request, and a new connection where none is idle);
- a paced token's CPU (``--tokens`` at ``--rate``), the one-token reply's share taken
  off, for each ``--pause``: after each chunk taken the socket's reads stop for that
  many seconds, so one read takes several chunks (0: every chunk read as it comes).
  The pause reaches the aiohttp connection through the SDK's vendored transport's
  private attributes: a measurement, not something chatstream does.

    .venv/bin/python bench/upstream_read.py
    .venv/bin/python bench/upstream_read.py --pause 0,0.1,0.2 --rounds 3

The process pins itself to core 0 and the upstream to core 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from django.conf import settings  # noqa: E402

settings.configure()

from bench.processes import Upstream  # noqa: E402
from bench.upstream import prompt  # noqa: E402
from chatstream.providers.base import ChatRequest, Chunk  # noqa: E402
from chatstream.providers.openai import OpenAIProvider  # noqa: E402


class PausingProvider(OpenAIProvider):
    """Stops the socket's reads for ``pause`` seconds after each chunk taken."""

    pause: float = 0.0

    def _read(self, response: Any) -> AsyncGenerator[Chunk, None]:
        chunks = super()._read(response)
        connection = response.stream._stream._aiohttp_response.connection
        if self.pause <= 0 or connection is None:  # None: the whole body is in already
            return chunks
        return self._paused(chunks, connection.transport, self.pause)

    @staticmethod
    async def _paused(
        chunks: AsyncGenerator[Chunk, None], transport: Any, pause: float
    ) -> AsyncGenerator[Chunk, None]:
        loop = asyncio.get_running_loop()
        async for chunk in chunks:
            yield chunk
            if transport.is_reading():
                transport.pause_reading()
                loop.call_later(pause, transport.resume_reading)


async def reply(provider: OpenAIProvider, tokens: int, rate: float) -> int:
    request = ChatRequest(
        model="bench-model", messages=[{"role": "user", "content": prompt(tokens, rate)}]
    )
    return sum([1 async for chunk in provider.stream(request) if chunk.text])


async def cpu_per_reply(port: int, streams: int, tokens: int, rate: float, pause: float) -> float:
    """CPU seconds per reply of ``tokens``, every reply checked complete."""
    provider = PausingProvider(options={"base_url": f"http://127.0.0.1:{port}/v1", "api_key": "x"})
    provider.pause = pause
    try:
        await asyncio.gather(*(reply(provider, 1, 0) for _ in range(5)))  # warm
        began = time.process_time()
        tasks = []
        for _ in range(streams):
            tasks.append(asyncio.create_task(reply(provider, tokens, rate)))
            await asyncio.sleep(1.0 / streams)
        counts = await asyncio.gather(*tasks)
        spent = time.process_time() - began
    finally:
        await provider.aclose()
    if counts != [tokens] * streams:
        raise RuntimeError(f"incomplete replies: {sorted(set(counts))}")
    return spent / streams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--pause", default="0,0.1", help="seconds, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pauses = [float(p) for p in args.pause.split(",")]

    upstream = Upstream(core=1)
    os.sched_setaffinity(0, {0})
    opens: list[float] = []
    per_token: dict[float, list[float]] = {p: [] for p in pauses}
    try:
        for _ in range(args.rounds):
            opened = asyncio.run(cpu_per_reply(upstream.port, args.streams, 1, 0, 0))
            opens.append(opened)
            for pause in pauses:
                whole = asyncio.run(
                    cpu_per_reply(upstream.port, args.streams, args.tokens, args.rate, pause)
                )
                per_token[pause].append((whole - opened) / (args.tokens - 1))
    finally:
        upstream.stop()
    print(
        f"{args.streams} replies of {args.tokens} tokens at {args.rate:g}/s, {args.rounds} rounds"
    )
    print(f"one-token reply: {statistics.median(opens) * 1e3:.2f} ms CPU (median)")
    first = statistics.median(per_token[pauses[0]])
    for pause in pauses:
        runs = per_token[pause]
        print(
            f"pause {pause:g} s: {statistics.median(runs) * 1e6:.1f} µs CPU per token "
            f"(runs {', '.join(f'{r * 1e6:.1f}' for r in runs)}; "
            f"{statistics.median(runs) / first:.2f}× pause {pauses[0]:g})"
        )


if __name__ == "__main__":
    main()
