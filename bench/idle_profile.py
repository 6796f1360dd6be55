"""Where an idle open stream's memory goes: chatstream's against the floor's, by traceback.

    .venv/bin/python bench/idle_profile.py                   # uvicorn, 100 streams each
    .venv/bin/python bench/idle_profile.py --server daphne -n 50 --depth 6

One server (pinned to core 0, the fake upstream and this client on core 1), traced
by tracemalloc (``--frames`` deep, so a few times slower), warmed up; then ``-n``
idle streams of the floor's relay (``floor: django + SDK``, whose model never
answers) and, once they have hung up, ``-n`` idle chatstream streams (the page's
POST, the model silent for ten minutes; ``--history N`` gives each conversation N
earlier turns, as ``bench/setup_cost.py`` does). A snapshot before and after each group
gives what an open stream of each keeps. Each allocation is charged to the
outermost frame of this repository's code in its traceback (a view, a middleware,
the generation's task, a pool thread's unit; "(none)" for the server's own), and
the table lists chatstream's figure per stream against the floor's, largest
difference first. ``--detail FRAME`` breaks one such frame down by the
``--depth`` frames inside it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.client import StreamResult, Target  # noqa: E402
from bench.environment import django_environment  # noqa: E402
from bench.processes import raise_open_files, work_directory  # noqa: E402
from bench.run import prepare  # noqa: E402
from bench.scenarios import FLOORS, floor_open  # noqa: E402
from bench.stalled_memory import WARM_OWNERS, start_server, start_upstream, stop  # noqa: E402

_IDLE_MODEL = 600.0  # seconds before a chatstream stream's model answers
_WARM_FLOORS = 10


async def _snapshot(pid: int, folder: Path) -> tracemalloc.Snapshot:
    number = len(list(folder.glob("*.snapshot"))) + 1 if folder.exists() else 1
    os.kill(pid, signal.SIGUSR2)
    path = folder / f"{number}.snapshot"
    for _ in range(6000):  # a traced server takes a while
        await asyncio.sleep(0.1)
        if path.exists():
            return tracemalloc.Snapshot.load(str(path))
    raise RuntimeError("the server wrote no snapshot")


def _upstream_active(upstream: subprocess.Popen[str]) -> int:
    """Streams the fake upstream is still sending (it answers a line on stdin)."""
    assert upstream.stdin is not None and upstream.stdout is not None
    upstream.stdin.write("\n")
    upstream.stdin.flush()
    return int(json.loads(upstream.stdout.readline())["active"])


def _name(frame: tracemalloc.Frame) -> str:
    name = frame.filename.split("site-packages/")[-1].split("python3.11/")[-1]
    return f"{name.removeprefix(str(ROOT) + '/')}:{frame.lineno}"


def _ours(traceback: tracemalloc.Traceback) -> int | None:
    """The outermost frame in this repository's code (tracebacks run outermost first)."""
    for index, frame in enumerate(traceback):
        if frame.filename.startswith(str(ROOT)) and "site-packages" not in frame.filename:
            return index
    return None


def _charged(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, detail: str, depth: int
) -> collections.Counter[str]:
    """Bytes kept between the snapshots, by the frame of ours that asked for them."""
    kept: collections.Counter[str] = collections.Counter()
    for stat in after.compare_to(before, "traceback"):
        frames = list(stat.traceback)
        index = _ours(stat.traceback)
        key = "(none) " + _name(frames[-1]) if index is None else _name(frames[index])
        if detail:
            if key != detail or index is None:
                continue
            key = " > ".join(_name(frame) for frame in frames[index + 1 :][-depth:])
        kept[key] += stat.size_diff
    return kept


async def profile(args: argparse.Namespace, workdir: Path) -> None:
    template, owners = prepare(workdir, args.n + WARM_OWNERS, args.history)
    with contextlib.ExitStack() as running:
        upstream, upstream_port = start_upstream()
        running.callback(stop, upstream)
        db = workdir / "db.sqlite3"
        shutil.copyfile(template, db)
        skip = ("OPENAI", "AZURE", "REDIS", "DJANGO", "CHATSTREAM", "MALLOC_", "PYTHONTRACEMALLOC")
        env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
        env.update(django_environment(db, upstream_port), PYTHONUNBUFFERED="1")
        snapshots = workdir / "snapshots"
        env.update(
            DJANGO_SETTINGS_MODULE="bench.stalled_settings",
            STALLED_DUMP_DIR=str(snapshots),
            PYTHONTRACEMALLOC=str(args.frames),
        )
        process, port = start_server(args.server, env, workdir / "server.log")
        running.callback(stop, process)
        path = FLOORS["floor: django + SDK"][1] + "events=0"
        target, n = Target(port, "chatstream"), args.n
        for owner in owners[-WARM_OWNERS:]:
            result = await target.stream(owner, 20, 0, timeout=120)
            if result.error:
                raise RuntimeError(f"warm-up failed: {result.error}")
        for _, writer in [await floor_open(port, path) for _ in range(_WARM_FLOORS)]:
            writer.close()
        await asyncio.sleep(2)
        floor_before = await _snapshot(process.pid, snapshots)
        floors = [await floor_open(port, path) for _ in range(n)]
        await asyncio.sleep(3)
        floor_after = await _snapshot(process.pid, snapshots)
        for _, writer in floors:
            writer.close()
        deadline = time.monotonic() + 60  # until the floor's relays have let the model go
        while _upstream_active(upstream) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        ours_before = await _snapshot(process.pid, snapshots)
        results = [StreamResult(started=time.monotonic()) for _ in range(n)]
        streams = [
            asyncio.ensure_future(target.stream(o, 1, 0, _IDLE_MODEL, timeout=900, result=r))
            for r, o in zip(results, owners[:n], strict=True)
        ]
        deadline = time.monotonic() + 120
        while any(r.message_id is None for r in results) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        opened = sum(r.message_id is not None for r in results)
        if opened < n:
            raise RuntimeError(f"only {opened} of {n} chatstream streams opened")
        await asyncio.sleep(3)
        ours_after = await _snapshot(process.pid, snapshots)
        for stream in streams:
            stream.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
    left = _charged(floor_before, ours_before, "", 0)
    print(
        f"left by the floor's streams once closed: {sum(left.values()) / n:,.0f} bytes per stream"
    )
    report(
        _charged(floor_before, floor_after, args.detail, args.depth),
        _charged(ours_before, ours_after, args.detail, args.depth),
        args,
    )


def report(floor: collections.Counter[str], ours: collections.Counter[str], args: Any) -> None:
    per = 1 / args.n
    print(
        f"{args.server}, {args.n} idle streams each, {args.history} earlier turns, "
        f"bytes kept per stream: chatstream "
        f"{sum(ours.values()) * per:,.0f}, the floor {sum(floor.values()) * per:,.0f}"
    )
    print(f"{'difference':>10} {'chatstream':>10} {'floor':>8}  charged to")
    keys = sorted(set(floor) | set(ours), key=lambda k: floor[k] - ours[k])
    for key in keys[: args.top]:
        difference = (ours[key] - floor[key]) * per
        print(f"{difference:10,.0f} {ours[key] * per:10,.0f} {floor[key] * per:8,.0f}  {key}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="uvicorn", choices=["daphne", "uvicorn"])
    parser.add_argument("-n", type=int, default=100, help="idle streams of each kind")
    parser.add_argument(
        "--history", type=int, default=0, help="earlier turns in each chatstream conversation"
    )
    parser.add_argument("--frames", type=int, default=25, help="tracemalloc's traceback depth")
    parser.add_argument("--top", type=int, default=25, help="rows to print")
    parser.add_argument(
        "--detail", default="", help="break down one frame, e.g. chatstream/dbpool.py:43"
    )
    parser.add_argument("--depth", type=int, default=4, help="frames shown with --detail")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    raise_open_files()
    with work_directory("idle-profile-", args.keep) as workdir:
        asyncio.run(profile(args, workdir))


if __name__ == "__main__":
    main()
