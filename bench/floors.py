"""What the layers under chatstream cost by themselves (``bench/floor.py``).

    .venv/bin/python bench/floors.py
    .venv/bin/python bench/floors.py --servers uvicorn --paced 1000 --idle 600

Two figures per server and layer, each the floor under any relay built on it:

- idle memory: ``--idle`` streams opened, half and then all, that stay open and
  idle; the server's RSS growth over the second half, per stream (as the idle
  scenario of ``bench/run.py``, which measures chatstream and the baseline);
- CPU per token: ``--paced`` streams of 200 deltas at 20 a second, started over
  one second (as ``bench/run.py``'s streams scenarios); server CPU per delta.

The layers:

- ``asgi``: a bare ASGI application, deltas on a timer: the server's own share;
- ``django``: a Django async view's ``StreamingHttpResponse`` through the demo
  project's middleware, deltas on a timer, the request's idle worker thread
  released as chatstream does (``chatstream.http.release_request_thread``);
- ``django, thread kept``: the same view as a developer writes it: Django keeps a
  worker thread per open request (the baseline relay has one too);
- ``django + SDK stream``: the model's tokens through chatstream's openai
  provider (the SDK on aiohttp, raw lines), one delta each: a relay with no
  reply log, no saving, no coalescing.

The server runs pinned to one core, the load client and the fake upstream on the
other. The table goes to ``bench/results/floors.md`` too (about 8 minutes in all).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.environment import django_environment  # noqa: E402
from bench.run import (  # noqa: E402
    RESULTS,
    Server,
    Upstream,
    cores,
    proc_cpu,
    proc_threads,
    raise_open_files,
    settled_rss,
)

_DJANGO = "project.asgi:application"
LAYERS = {
    "asgi": ("bench.floor:asgi_application", "/?"),
    "django": (_DJANGO, "/bench/floor/?release=1&"),
    "django, thread kept": (_DJANGO, "/bench/floor/?"),
    "django + SDK stream": (_DJANGO, "/bench/floor/?release=1&upstream=1&"),
}
TOKENS, RATE = 200, 20.0
_BATCH = 50  # idle connections opened at once
_OPEN_TIMEOUT = 60.0  # seconds for a batch of idle streams to open


async def _open(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A GET whose first event has arrived."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")  # the headers
    await reader.readuntil(b"\n\n")  # the first event
    return reader, writer


async def _paced_stream(port: int, path: str, delay: float) -> int:
    """One stream to its ``done``: the deltas it got, or -1 if it failed."""
    await asyncio.sleep(delay)
    try:
        reader, writer = await _open(port, path)
    except (OSError, asyncio.IncompleteReadError):
        return -1
    try:
        deltas, tail = 0, b""
        while True:
            data = await reader.read(65536)
            if not data:
                return -1
            deltas += data.count(b"event: delta")
            tail = (tail + data)[-64:]
            if b"event: done" in tail:
                return deltas
    except OSError:
        return -1
    finally:
        writer.close()


async def idle_memory(server: Server, path: str, streams: int) -> str:
    writers: list[asyncio.StreamWriter] = []

    async def open_some(count: int) -> None:
        for start in range(0, count, _BATCH):
            batch = [_open(server.port, path) for _ in range(min(_BATCH, count - start))]
            opened = await asyncio.wait_for(asyncio.gather(*batch), _OPEN_TIMEOUT)
            writers.extend(writer for _, writer in opened)

    try:
        await open_some(10)  # what the first requests cost once: imports, pools
        before = await settled_rss(server)
        half = streams // 2
        await open_some(half)
        at_half = await settled_rss(server)
        await open_some(streams - half)
        at_all = await settled_rss(server)
        threads = proc_threads(server.pid)
    finally:
        for writer in writers:
            writer.close()
    per_stream = (at_all - at_half) / (streams - half)
    return f"{per_stream:.1f} KB ({(at_all - before) / streams:.1f} over all; {threads} threads)"


async def paced_cpu(server: Server, path: str, streams: int) -> str:
    await asyncio.gather(*(_paced_stream(server.port, path, 0) for _ in range(5)))  # warm up
    cpu_before, began = proc_cpu(server.pid), time.monotonic()
    timeout = TOKENS / RATE + 240
    load = (_paced_stream(server.port, path, index / streams) for index in range(streams))
    got = await asyncio.wait_for(asyncio.gather(*load), timeout)
    cpu, wall = proc_cpu(server.pid) - cpu_before, time.monotonic() - began
    failed = sum(1 for deltas in got if deltas != TOKENS)
    delivered = sum(deltas for deltas in got if deltas > 0)
    per_token = cpu / delivered * 1e6 if delivered else float("nan")
    return f"{per_token:.1f} µs ({failed} failed; {wall:.0f} s)"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle", type=int, default=600, help="idle streams (0: skip)")
    parser.add_argument("--paced", type=int, default=1000, help="paced streams (0: skip)")
    parser.add_argument("--servers", default="daphne,uvicorn")
    args = parser.parse_args()
    raise_open_files()
    server_core, client_core = cores()
    if client_core is not None:
        os.sched_setaffinity(0, {client_core})
    upstream = Upstream(client_core)
    lines = [
        f"Floors of {time.strftime('%Y-%m-%d %H:%M')}: idle memory per open stream "
        f"({args.idle} streams, the second half's growth); server CPU per delta "
        f"({args.paced} streams of {TOKENS} at {RATE:g}/s); server pinned to one core",
        "",
        "| server | layer | idle memory per stream | CPU per delta |",
        "|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="chatstream-floors-") as work:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "DJANGO"))}
            # The views touch no database: an empty SQLite file will do.
            env.update(django_environment(Path(work) / "unused.sqlite3", upstream.port))
            for kind in args.servers.split(","):
                for layer, (app, path) in LAYERS.items():
                    figures = []
                    for streams, measure, query in (
                        (args.idle, idle_memory, "events=0"),
                        (args.paced, paced_cpu, f"events={TOKENS}&rate={RATE:g}"),
                    ):
                        if not streams:
                            figures.append("—")
                            continue
                        log = Path(work) / f"{kind}.log"
                        server = Server(kind, env, server_core, log, app=app).start()
                        try:
                            figures.append(await measure(server, path + query, streams))
                        finally:
                            server.stop()
                    lines.append(f"| {kind} | {layer} | {' | '.join(figures)} |")
                    print(lines[-1], flush=True)
    finally:
        upstream.stop()
    RESULTS.joinpath("floors.md").write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {RESULTS / 'floors.md'}")


if __name__ == "__main__":
    asyncio.run(main())
