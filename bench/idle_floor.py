"""Idle memory per open stream of the layers under chatstream (``bench/floor.py``).

    .venv/bin/python bench/idle_floor.py
    .venv/bin/python bench/idle_floor.py --streams 1000 --servers uvicorn

For each server and layer it opens ``--streams`` streams that stay open and idle,
half, then all, and prints the server's RSS per open stream over the second half
(as the idle scenario of ``bench/run.py`` does, which measures chatstream and the
baseline). The layers:

- ``asgi``: a bare ASGI application: the server's own share;
- ``django``: a Django async view's ``StreamingHttpResponse``, through the demo
  project's middleware, with the request's idle worker thread released as
  chatstream does (``chatstream.http.release_request_thread``);
- ``django, thread kept``: the same view as a developer writes it: Django keeps a
  worker thread per open request (the baseline relay has one too);
- ``django + SDK stream``: ``django`` plus an open upstream request through
  chatstream's openai provider (the SDK on aiohttp), which chatstream needs too.

The server runs pinned to one core, the client and the fake upstream on the other.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.environment import django_environment  # noqa: E402
from bench.run import Server, Upstream, cores, proc_threads, raise_open_files  # noqa: E402

LAYERS = {
    "asgi": ("bench.floor:asgi_application", "/"),
    "django": ("project.asgi:application", "/bench/floor/?release=1"),
    "django, thread kept": ("project.asgi:application", "/bench/floor/"),
    "django + SDK stream": ("project.asgi:application", "/bench/floor/?release=1&upstream=1"),
}
_BATCH = 50  # connections opened at once
_OPEN_TIMEOUT = 60.0  # seconds for one batch to open


async def _open(port: int, path: str) -> asyncio.StreamWriter:
    """A GET whose first event has arrived: the stream is open, then idle."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")  # the headers
    await reader.readuntil(b"\n\n")  # the event
    return writer


async def _settled_rss(server: Server) -> float:
    await asyncio.sleep(1.0)
    samples = []
    for _ in range(5):
        await asyncio.sleep(0.1)
        samples.append(server.rss_kb())
    return statistics.median(samples)


async def measure(server: Server, path: str, streams: int) -> dict[str, float]:
    writers: list[asyncio.StreamWriter] = []

    async def open_some(count: int) -> None:
        for start in range(0, count, _BATCH):
            batch = [_open(server.port, path) for _ in range(min(_BATCH, count - start))]
            writers.extend(await asyncio.wait_for(asyncio.gather(*batch), _OPEN_TIMEOUT))

    try:
        await open_some(10)  # what the first request costs once: imports, pools
        before = await _settled_rss(server)
        half = streams // 2
        await open_some(half)
        at_half = await _settled_rss(server)
        await open_some(streams - half)
        at_all = await _settled_rss(server)
        return {
            "kb_per_stream": (at_all - at_half) / (streams - half),
            "kb_per_stream_all": (at_all - before) / streams,
            "threads": proc_threads(server.pid),
        }
    finally:
        for writer in writers:
            writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=600)
    parser.add_argument("--servers", default="daphne,uvicorn")
    args = parser.parse_args()
    raise_open_files()
    server_core, client_core = cores()
    if client_core is not None:
        os.sched_setaffinity(0, {client_core})
    upstream = Upstream(client_core)
    print(f"RSS per open, idle stream ({args.streams} streams; the second half's growth)\n")
    print("| server | layer | KB per stream | KB per stream, all | threads at the end |")
    print("|---|---|---|---|---|")
    try:
        with tempfile.TemporaryDirectory(prefix="chatstream-floor-") as work:
            env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "DJANGO"))}
            # The views touch no database: an empty SQLite file will do.
            env.update(django_environment(Path(work) / "unused.sqlite3", upstream.port))
            for kind in args.servers.split(","):
                for layer, (app, path) in LAYERS.items():
                    log = Path(work) / f"{kind}.log"
                    server = Server(kind, env, server_core, log, app=app).start()
                    try:
                        figures = await measure(server, path, args.streams)
                    finally:
                        server.stop()
                    print(
                        f"| {kind} | {layer} | {figures['kb_per_stream']:.1f} "
                        f"| {figures['kb_per_stream_all']:.1f} | {figures['threads']} |",
                        flush=True,
                    )
    finally:
        upstream.stop()


if __name__ == "__main__":
    asyncio.run(main())
