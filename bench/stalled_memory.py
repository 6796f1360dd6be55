"""Where a stalled reader's memory goes: server RSS and live memory per non-reading client.

    .venv/bin/python bench/stalled_memory.py                  # daphne and uvicorn, 3 runs each
    .venv/bin/python bench/stalled_memory.py --read           # the control: clients that read
    .venv/bin/python bench/stalled_memory.py --dump           # + live memory, from the allocators
    .venv/bin/python bench/stalled_memory.py --dump --tracemalloc 10 --runs 1   # + by traceback
    .venv/bin/python bench/stalled_memory.py --env MALLOC_ARENA_MAX=2 --trim
    .venv/bin/python bench/stalled_memory.py --rate 100 --measure-after 8      # still streaming

Each run: a fresh server (pinned to core 0, the fake upstream and this client on
core 1) on a fresh copy of a prepared database, warmed up as the benchmark does,
its RSS once settled; then ``--rounds`` groups of ``-n`` clients that ask for a long,
fast reply and read none of it (a 4 KB receive buffer, as ``bench/client.py``),
each group measured once every reply is complete in the database (settled RSS,
and with ``--dump`` the allocators' view); then everyone hangs up.

Why RSS alone misleads here: the first group's figure is what the ``nonreading``
scenario reports, and clients that read (``--read``) cost the same. It is the
allocators' high-water mark after a burst of fast replies (the upstream's bytes
buffered while the process parses them), which glibc and pymalloc keep. The
second group, and the dumps' live bytes, say what a stalled reader holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.client import Owner, StreamResult, Target  # noqa: E402
from bench.environment import django_environment  # noqa: E402
from bench.processes import raise_open_files, work_directory  # noqa: E402
from bench.run import prepare  # noqa: E402
from bench.upstream import expected_text  # noqa: E402

PYTHON = sys.executable
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
WARM_OWNERS = 10


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as file:
        return int(file.read().split()[1]) * PAGE_KB


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_count(pid: int) -> int:
    with open(f"/proc/{pid}/status") as file:
        return next(int(line.split()[1]) for line in file if line.startswith("Threads:"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    return subprocess.Popen(["taskset", "-c", kwargs.pop("core"), *command], cwd=ROOT, **kwargs)


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_upstream() -> tuple[subprocess.Popen[str], int]:
    """The fake upstream and its port, on core 1, where this process then runs too."""
    upstream = start(
        [PYTHON, str(ROOT / "bench" / "upstream.py"), "--port", "0"],
        core="1", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = upstream.stdout.readline().split() if upstream.stdout else []
    if not line or line[0] != "READY":
        stop(upstream)
        raise RuntimeError("the fake upstream did not start")
    os.sched_setaffinity(0, {1})
    return upstream, int(line[1])


def start_server(kind: str, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[Any], int]:
    """daphne or uvicorn as ``bench/processes.py`` starts them, on core 0."""
    port, app = free_port(), "project.asgi:application"
    if kind == "daphne":
        endpoint = f"tcp:port={port}:interface=127.0.0.1:backlog=4096"
        command = [PYTHON, "-m", "daphne", "-e", endpoint, app]
    else:
        command = [PYTHON, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
        command += ["--backlog", "2048", "--lifespan", "off", "--no-access-log"]
    with open(log, "ab") as out:
        process = start(command, core="0", env=env, stdout=out, stderr=out)
    deadline = time.monotonic() + 300  # tracemalloc makes start-up slow
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{kind} exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
            return process, port
        time.sleep(0.05)
    stop(process)
    raise RuntimeError(f"{kind} did not start")


async def settled(pid: int, quiet: float = 1.0, most: float = 15.0) -> int:
    """RSS once it has moved less than 64 KB for ``quiet`` seconds."""
    began = since = time.monotonic()
    last = rss_kb(pid)
    while time.monotonic() - began < most:
        await asyncio.sleep(0.1)
        now = rss_kb(pid)
        if abs(now - last) > 64:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return rss_kb(pid)


async def dump(pid: int, folder: Path) -> dict[str, Any]:
    """The server's SIGUSR1 dump (``bench/stalled_settings.py``)."""
    number = len(list(folder.glob("*.json"))) + 1 if folder.exists() else 1
    os.kill(pid, signal.SIGUSR1)
    path = folder / f"{number}.json"
    for _ in range(6000):  # a tracemalloc snapshot of a busy server takes minutes
        await asyncio.sleep(0.1)
        if path.exists():
            return json.loads(path.read_text())
    raise RuntimeError("the server wrote no dump")


def live(record: dict[str, Any]) -> int:
    """Live bytes: pymalloc's allocated blocks (none under tracemalloc) plus glibc's in use."""
    return record["pymalloc"].get("used", 0) + record["glibc"]["in_use"]


async def complete(target: Target, results: list[StreamResult], owners: list[Owner]) -> int:
    """How many replies are complete in the database (waits up to a minute for all)."""
    deadline, done = time.monotonic() + 60, 0
    while time.monotonic() < deadline:
        done = 0
        for result, owner in zip(results, owners, strict=True):
            if result.message_id:
                status, payload = await target.get_json(
                    f"/api/messages/{result.message_id}/", owner
                )
                done += status == 200 and payload.get("status") == "complete"
        if done == len(results):
            break
        await asyncio.sleep(0.3)
    return done


async def open_streams(
    target: Target, owners: list[Owner], args: argparse.Namespace
) -> tuple[list[asyncio.Future[None]], list[StreamResult]]:
    """Streams whose ``started`` has arrived; stalled ones read nothing more until cancelled."""
    results = [StreamResult(started=time.monotonic()) for _ in owners]
    tasks = [
        asyncio.ensure_future(
            target._stream(result, owner, args.tokens, args.rate, 0.0, args.read, 3600.0)
        )
        for result, owner in zip(results, owners, strict=True)
    ]
    deadline = time.monotonic() + 30
    while any(r.message_id is None for r in results) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return tasks, results


async def hang_up(tasks: list[asyncio.Future[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def one_run(
    args: argparse.Namespace,
    kind: str,
    template: Path,
    owners: list[Owner],
    upstream: int,
    workdir: Path,
    run: int,
) -> dict[str, Any]:
    db = workdir / f"db-{kind}-{run}.sqlite3"
    shutil.copyfile(template, db)
    skip = ("OPENAI", "AZURE", "REDIS", "DJANGO", "CHATSTREAM", "MALLOC_", "PYTHONTRACEMALLOC")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    env.update(django_environment(db, upstream), PYTHONUNBUFFERED="1")
    dumps = workdir / f"dumps-{kind}-{run}"
    env.update(DJANGO_SETTINGS_MODULE="bench.stalled_settings", STALLED_DUMP_DIR=str(dumps))
    env.update(item.split("=", 1) for item in args.env)
    if args.tracemalloc:
        env["PYTHONTRACEMALLOC"] = str(args.tracemalloc)
    process, port = start_server(kind, env, workdir / f"server-{kind}-{run}.log")
    pid, target = process.pid, Target(port, "chatstream")
    record: dict[str, Any] = {"server": kind, "rounds": []}
    opened: list[asyncio.Future[None]] = []
    try:
        warm = owners[-WARM_OWNERS:]
        for result in [await target.stream(o, 20, 0, timeout=60) for o in warm[:3]] + list(
            await asyncio.gather(*(target.stream(o, 20, 0, timeout=60) for o in warm[3:]))
        ):
            if result.error:
                raise RuntimeError(f"warm-up failed: {result.error}")
        if args.dump:  # first: its own allocations are then in the starting RSS
            record["dump"] = await dump(pid, dumps)
        record["rss"] = await settled(pid)
        for i in range(args.rounds):
            group = owners[i * args.n : (i + 1) * args.n]
            cpu, began = cpu_s(pid), time.monotonic()
            tasks, results = await open_streams(target, group, args)
            opened += tasks
            row: dict[str, Any] = {"threads_peak": thread_count(pid)}
            if args.measure_after:  # still streaming
                while time.monotonic() - began < args.measure_after:
                    row["threads_peak"] = max(row["threads_peak"], thread_count(pid))
                    await asyncio.sleep(0.02)
                row["complete"] = None
            else:
                waiting = asyncio.ensure_future(complete(target, results, group))
                while not waiting.done():
                    row["threads_peak"] = max(row["threads_peak"], thread_count(pid))
                    await asyncio.sleep(0.02)
                row["complete"] = waiting.result()
            row["rss"] = await settled(pid)
            row["cpu_s"] = round(cpu_s(pid) - cpu, 2)
            row["threads"] = thread_count(pid)
            row["errors"] = sum(1 for r in results if r.error)
            if args.trim:
                os.kill(pid, signal.SIGWINCH)
                await asyncio.sleep(0.5)
                row["rss_trimmed"] = await settled(pid)
            if args.dump:
                row["dump"] = await dump(pid, dumps)
            record["rounds"].append(row)
        await hang_up(opened)
        opened = []
        await asyncio.sleep(1)
        record["rss_hung_up"] = await settled(pid, quiet=2.0)
        if args.dump:
            record["dump_hung_up"] = await dump(pid, dumps)
    finally:
        await hang_up(opened)
        stop(process)
    return record


def figures(record: dict[str, Any], n: int) -> dict[str, Any]:
    """Per client, in KB: each round's RSS growth, and with dumps, live and unsent bytes."""
    out: dict[str, Any] = {}
    previous, previous_dump = record["rss"], record.get("dump", {})
    for i, row in enumerate(record["rounds"], 1):
        out[f"rss round {i}"] = (row["rss"] - previous) / n
        previous = row["rss"]
        if "rss_trimmed" in row:
            out[f"rss round {i} after malloc_trim"] = (row["rss_trimmed"] - record["rss"]) / (i * n)
        if "dump" in row:
            if row["dump"]["pymalloc"]:  # not under tracemalloc: traced says it then
                out[f"live round {i}"] = (live(row["dump"]) - live(record["dump"])) / (i * n) / 1024
            if "traced" in row["dump"]:
                traced = row["dump"]["traced"] - record["dump"]["traced"]
                out[f"traced round {i}"] = traced / (i * n) / 1024
                peak = row["dump"]["traced_peak"] - previous_dump["traced_after"]
                out[f"traced peak round {i}"] = peak / n / 1024
            previous_dump = row["dump"]
            buffered = row["dump"]["write_buffers"]
            out[f"unsent round {i}"] = sum(b for _, b in buffered.values()) / (i * n) / 1024
        out[f"server CPU s round {i}"] = row["cpu_s"]
        out[f"threads peak round {i}"] = row["threads_peak"]
    total = n * len(record["rounds"])
    out["rss hung up"] = (record["rss_hung_up"] - record["rss"]) / total
    if "dump_hung_up" in record and record["dump_hung_up"]["pymalloc"]:
        out["live hung up"] = (live(record["dump_hung_up"]) - live(record["dump"])) / total / 1024
    return out


def report(records: list[dict[str, Any]], args: argparse.Namespace) -> None:
    text = len(expected_text(args.tokens).encode()) / 1024
    what = "reading" if args.read else "stalled"
    print(f"\nPer {what} client, medians of {args.runs} (reply text {text:.1f} KB, UTF-8):")
    kinds = list(dict.fromkeys(r["server"] for r in records))
    rows = {k: [figures(r, args.n) for r in records if r["server"] == k] for k in kinds}
    names = list(dict.fromkeys(name for k in kinds for f in rows[k] for name in f))
    print(f"{'':32}" + "".join(f"{k:>24}" for k in kinds))
    for name in names:
        cells = []
        for k in kinds:
            values = [f[name] for f in rows[k] if name in f]
            unit = "" if name.startswith(("server CPU", "threads")) else " KB"
            cells.append(
                f"{statistics.median(values):.1f}{unit} ({min(values):.0f}-{max(values):.0f})"
            )
        print(f"{name:32}" + "".join(f"{c:>24}" for c in cells))
    for record in records:
        traced = record["rounds"][0].get("dump", {}).get("traced_diff")
        if traced:
            print(f"\n{record['server']}: tracemalloc, live after round 1 against the start:")
            for stat in traced[:12]:
                where = " <- ".join(reversed(stat["traceback"][-3:]))
                print(f"  {stat['size'] / 1024:9.1f} KB {stat['count']:7d}  {where}")


async def main_async(args: argparse.Namespace) -> None:
    upstream = None
    with work_directory("stalled-memory-", args.keep) as workdir:
        try:
            template, owners = prepare(workdir, args.n * args.rounds + WARM_OWNERS)
            upstream, port = start_upstream()
            records = []
            for run in range(args.runs):
                for kind in args.servers.split(","):
                    record = await one_run(args, kind, template, owners, port, workdir, run)
                    rounds = [(r["rss"], r["complete"], r["errors"]) for r in record["rounds"]]
                    rss = record["rss"]
                    print(
                        f"run {run + 1} {kind}: RSS {rss} KB; (RSS, done, errors) {rounds}",
                        flush=True,
                    )
                    records.append(record)
            report(records, args)
            if args.out:
                Path(args.out).write_text(json.dumps(records, indent=1))
        finally:
            if upstream is not None:
                stop(upstream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="daphne,uvicorn")
    parser.add_argument("-n", type=int, default=20, help="clients per round")
    parser.add_argument("--rounds", type=int, default=2, help="groups of -n, one after another")
    parser.add_argument("--runs", type=int, default=3, help="fresh servers per kind; medians")
    parser.add_argument("--tokens", type=int, default=3000, help="tokens per reply")
    parser.add_argument("--rate", type=float, default=0.0, help="tokens/s (0: as fast as can be)")
    parser.add_argument(
        "--measure-after",
        type=float,
        default=0.0,
        help="measure after this many s, still streaming",
    )
    parser.add_argument("--read", action="store_true", help="clients that read (the control)")
    parser.add_argument("--dump", action="store_true", help="live memory from the server's dumps")
    parser.add_argument("--tracemalloc", type=int, default=0, help="frames (with --dump)")
    parser.add_argument("--trim", action="store_true", help="RSS again after malloc_trim(0)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    parser.add_argument("--out", default="", help="every record, as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    raise_open_files()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
