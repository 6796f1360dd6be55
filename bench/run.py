"""The benchmark: chatstream against a straightforward Django relay, side by side.

    .venv/bin/python bench/run.py            # the full benchmark (about 12 minutes)
    .venv/bin/python bench/run.py --quick    # a smaller one (about 3 minutes)
    .venv/bin/python bench/run.py --scenarios throughput --servers daphne --profile

It starts everything itself on 127.0.0.1: a fake OpenAI-compatible upstream
(``bench/upstream.py``), and for every scenario and variant a fresh server
process (daphne or uvicorn) on a fresh copy of one prepared SQLite database,
pinned to core 0, while the upstream and the load client share core 1. The
baseline (``bench/baseline.py``) runs in the same server software with the same
settings, so ratios measured in one run are comparable even on a busy machine.
Results go to ``bench/results/latest.json`` and ``bench/results/latest.md``.

Redis mode runs when ``REDIS_URL=redis://127.0.0.1:6379/<db>`` is set (else on a
private ``redis-server`` if one is installed) and ``chatstream/replylog/redis.py``
exists; otherwise it is skipped with a message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.client import Owner, StreamResult, Target, percentile  # noqa: E402
from bench.environment import django_environment  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
CHECKPOINT_INTERVAL = 5.0  # chatstream's default, which bench/settings.py keeps
VARIANTS = ("chatstream", "baseline")
DJANGO_APP = "project.asgi:application"
WARM_OWNERS = 10


# --- configuration ------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    streams: tuple[int, ...] = (100, 500, 1000)
    stream_tokens: int = 200
    rate: float = 20.0
    throughput_streams: int = 100
    throughput_tokens: int = 1000
    setup_streams: int = 300
    setup_concurrency: int = 8
    idle_streams: int = 600
    idle_delay: float = 60.0
    nonreading: int = 20
    nonreading_tokens: int = 3000
    nonreading_hold: float = 8.0
    readers: int = 100
    reader_tokens: int = 100

    @property
    def owners(self) -> int:
        return max(*self.streams, self.setup_streams, self.idle_streams) + WARM_OWNERS


FULL = Sizes()
QUICK = Sizes(
    streams=(100, 1000),
    stream_tokens=100,
    throughput_streams=50,
    setup_streams=100,
    idle_streams=300,
    idle_delay=15.0,
    nonreading=10,
    nonreading_hold=5.0,
    readers=50,
)
SCENARIOS = ("streams", "throughput", "setup", "idle", "nonreading", "floors", "redis")


# --- processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(core: int | None, command: list[str]) -> list[str]:
    return command if core is None else ["taskset", "-c", str(core), *command]


def proc_cpu(pid: int) -> float:
    """utime + stime of every thread of ``pid``, in seconds."""
    return sum(proc_times(pid))


def proc_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of every thread of ``pid``, in seconds."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as file:
        return int(file.read().split()[1]) * PAGE_KB


def proc_threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


class Upstream:
    """The fake OpenAI server, in its own process; asked for its counters over stdin."""

    def __init__(self, core: int | None) -> None:
        self.process = subprocess.Popen(
            pinned(core, [PYTHON, str(ROOT / "bench" / "upstream.py"), "--port", "0"]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        if not line or line[0] != "READY":
            raise RuntimeError("the fake upstream did not start")
        self.port = int(line[1])

    def stats(self) -> dict[str, int]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    async def astats(self) -> dict[str, int]:
        return await asyncio.get_running_loop().run_in_executor(None, self.stats)

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen[Any], timeout: float = 15) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Redis:
    """A private redis-server on 127.0.0.1, when no REDIS_URL is given."""

    def __init__(self, core: int | None, workdir: Path) -> None:
        self.port = free_port()
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
        self.process = subprocess.Popen(
            pinned(core, command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        stop_process(self.process)


@dataclass
class Server:
    kind: str
    env: dict[str, str]
    core: int | None
    log_path: Path
    profile: Path | None = None  # cProfile's output: the server runs under it
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    app: str = DJANGO_APP

    def start(self) -> Server:
        self.port = free_port()
        python = [PYTHON]
        if self.profile is not None:
            python += ["-m", "cProfile", "-o", str(self.profile)]
        if self.kind == "daphne":
            endpoint = f"tcp:port={self.port}:interface=127.0.0.1:backlog=4096"
            command = [*python, "-m", "daphne", "-e", endpoint, self.app]
        else:
            command = [*python, "-m", "uvicorn", self.app, "--host", "127.0.0.1"]
            command += ["--port", str(self.port), "--backlog", "2048"]
            command += ["--lifespan", "off", "--no-access-log"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                pinned(self.core, command), cwd=ROOT, env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited: {self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} did not start: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_kb(self) -> int:
        return proc_rss_kb(self.pid)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


class RssSampler:
    """Samples a process's RSS (and thread count) every 50 ms while a scenario runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = proc_rss_kb(pid)
        self.peak = self.start
        self.threads_peak = 0
        self.samples: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RssSampler:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.sample()

    def sample(self) -> int:
        with contextlib.suppress(OSError):
            rss = proc_rss_kb(self.pid)
            self.samples.append(rss)
            self.peak = max(self.peak, rss)
            self.threads_peak = max(self.threads_peak, proc_threads(self.pid))
            return rss
        return 0

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.05)


# --- measuring ------------------------------------------------------------------------


@dataclass
class Bench:
    sizes: Sizes
    workdir: Path
    template: Path
    owners: list[Owner]
    upstream: Upstream
    server_core: int | None
    redis_url: str = ""
    redis_pid: int | None = None
    profile: bool = False
    py_spy: bool = False
    tracemalloc: bool = False
    runs: list[dict[str, Any]] = field(default_factory=list)
    counter: int = 0

    def server_env(self, redis_url: str, db: Path, admission: bool) -> dict[str, str]:
        skip = ("OPENAI", "AZURE", "REDIS", "DJANGO", "CHATSTREAM")
        env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
        env.update(django_environment(db, self.upstream.port), PYTHONUNBUFFERED="1")
        if not admission:  # the baseline's developer has no admission limit in front
            env["DJANGO_MAX_ACTIVE_REQUESTS"] = "0"
        if redis_url:
            env["REDIS_URL"] = redis_url
        if self.tracemalloc:
            env["PYTHONTRACEMALLOC"] = "1"
        return env

    @contextlib.contextmanager
    def sampled(self, server: Server, out: Path) -> Iterator[None]:
        """Samples every thread of the server with py-spy while a scenario runs."""
        if not self.py_spy:
            yield
            return
        command = ["py-spy", "record", "--pid", str(server.pid), "--nonblocking"]
        command += ["--rate", "250", "--gil", "--format", "raw", "--output", str(out)]
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=30)

    def new_server(
        self,
        kind: str,
        redis_url: str = "",
        profile: Path | None = None,
        admission: bool = True,
        app: str = DJANGO_APP,
    ) -> Server:
        self.counter += 1
        db = self.workdir / f"db-{self.counter}.sqlite3"
        shutil.copyfile(self.template, db)
        log = self.workdir / f"server-{self.counter}-{kind}.log"
        env = self.server_env(redis_url, db, admission)
        server = Server(kind, env, self.server_core, log, profile, app=app)
        return server.start()

    async def run(
        self,
        kind: str,
        scenario: str,
        variant: str,
        body: Callable[[Target, Server], Awaitable[dict[str, Any]]],
        app: str = DJANGO_APP,
    ) -> dict[str, Any]:
        redis = variant == "chatstream+redis"
        profile = self.profile and variant != "baseline"
        label = f"{kind:7} {scenario:13} {variant:16}"
        print(f"  {label} ...", end="", flush=True)
        record: dict[str, Any] = {"server": kind, "scenario": scenario, "variant": variant}
        server = None
        began = time.monotonic()
        try:
            out = RESULTS / f"profile-{kind}-{scenario}-{variant.replace('+', '-')}.prof"
            server = self.new_server(
                kind,
                self.redis_url if redis else "",
                profile=out if profile else None,
                admission=variant != "baseline",
                app=app,
            )
            target = Target(server.port, variant)
            if app == DJANGO_APP:  # a floor warms itself up
                await self.warm_up(target)
            redis_cpu = proc_cpu(self.redis_pid) if redis and self.redis_pid else None
            with self.sampled(server, out.with_suffix(".txt")):
                record.update(await asyncio.wait_for(body(target, server), 600))
            if redis_cpu is not None and record.get("tokens"):
                assert self.redis_pid is not None
                used = proc_cpu(self.redis_pid) - redis_cpu
                record["redis_cpu_us_per_token"] = round(used / record["tokens"] * 1e6, 1)
        except Exception as exc:  # a failed run is a result too; the next one goes on
            record["failure"] = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            if server is not None:
                server.stop()
        record["run_s"] = round(time.monotonic() - began, 1)
        print(" " + short(record), flush=True)
        self.runs.append(record)
        return record

    async def warm_up(self, target: Target) -> None:
        """Imports, the SDK client, connection pools: paid before measuring."""
        owners = self.owners[-WARM_OWNERS:]
        for owner in owners[:3]:
            result = await target.stream(owner, 20, 0, timeout=30)
            if result.error:
                raise RuntimeError(f"warm-up failed: {result.error}")
        results = await asyncio.gather(*(target.stream(o, 20, 0, timeout=30) for o in owners[3:]))
        if any(r.error for r in results):
            raise RuntimeError(f"warm-up failed: {[r.error for r in results if r.error][0]}")

    async def measure(
        self, target: Target, server: Server, load: Callable[[], Awaitable[list[StreamResult]]]
    ) -> tuple[dict[str, Any], list[StreamResult]]:
        """Server CPU, RSS and DB writes around ``load``."""
        writes_before = (await target.get_json("/bench/stats/"))[1]["writes"]
        user_before, system_before = proc_times(server.pid)
        client_before = _own_cpu() + proc_cpu(self.upstream.process.pid)
        async with RssSampler(server.pid) as rss:
            began = time.monotonic()
            results = await load()
            wall = time.monotonic() - began
        user, system = proc_times(server.pid)
        user, system = user - user_before, system - system_before
        cpu = user + system
        client = _own_cpu() + proc_cpu(self.upstream.process.pid) - client_before
        writes_after = (await target.get_json("/bench/stats/"))[1]["writes"]
        writes = Counter(writes_after)
        writes.subtract(writes_before)
        return {
            "server_cpu_s": round(cpu, 3),
            # The kernel's share: thread switches, socket and file calls.
            "server_system_share": round(system / cpu, 2) if cpu else None,
            "wall_s": round(wall, 2),
            "rss_start_mb": round(rss.start / 1024, 1),
            "rss_peak_mb": round(rss.peak / 1024, 1),
            # Django gives each request a thread while it is handled: queued requests show here.
            "threads_peak": rss.threads_peak,
            "db_writes": {k: v for k, v in sorted(writes.items()) if v},
            # Near 1.0 the load client's core, not the server, limits the run.
            "client_core_busy": round(client / wall, 2) if wall else None,
        }, results


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def summarise(results: list[StreamResult], tokens_each: int) -> dict[str, Any]:
    ok = [r for r in results if r.error is None]
    errors = Counter(r.error for r in results if r.error is not None)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    gaps = [gap for r in ok for gap in r.gaps]
    durations = [r.ended - r.first for r in ok if r.ended is not None and r.first is not None]
    lives = [r.ended - r.started for r in ok if r.ended is not None]
    ended = [r.ended for r in ok if r.ended is not None]
    span = (max(ended) - min(r.started for r in results)) if ended else 0.0
    tokens = len(ok) * tokens_each
    return {
        "streams": len(results),
        "ok": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors.most_common(3)),
        "ttft_p50_ms": ms(percentile(ttfts, 50)),
        "ttft_p99_ms": ms(percentile(ttfts, 99)),
        "gap_p99_ms": ms(percentile(gaps, 99)),
        "stream_p50_s": round(statistics.median(durations), 2) if durations else None,
        # From the POST to done: how long each reply was "streaming" in the database.
        "life_p50_s": round(statistics.median(lives), 2) if lives else None,
        "tokens": tokens,
        "tokens_per_s": round(tokens / span) if span else None,
        "deltas_per_stream": round(sum(r.deltas for r in ok) / len(ok), 1) if ok else None,
    }


def finish(record: dict[str, Any], replies: int) -> dict[str, Any]:
    """Per-token and per-reply figures from a measured run."""
    if record.get("tokens"):
        record["cpu_us_per_token"] = round(record["server_cpu_s"] / record["tokens"] * 1e6, 1)
    if replies:
        total = sum(record["db_writes"].values())
        record["db_writes_per_reply"] = round(total / replies, 2)
    return record


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# --- scenarios ------------------------------------------------------------------------


async def spread_streams(
    target: Target,
    owners: list[Owner],
    count: int,
    tokens: int,
    rate: float,
    spread: float,
    delay: float = 0.0,
    timeout: float = 120.0,
) -> list[StreamResult]:
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05

    async def one(index: int) -> StreamResult:
        await asyncio.sleep(max(0.0, start + spread * index / count - loop.time()))
        return await target.stream(owners[index], tokens, rate, delay, timeout=timeout)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def streams_scenario(bench: Bench, count: int) -> Callable[..., Awaitable[dict[str, Any]]]:
    sizes = bench.sizes

    async def body(target: Target, server: Server) -> dict[str, Any]:
        paced = sizes.stream_tokens / sizes.rate

        async def load() -> list[StreamResult]:
            return await spread_streams(
                target, bench.owners, count, sizes.stream_tokens, sizes.rate, 1.0,
                timeout=paced + 240,  # an overloaded server is slow, not wrong: CPU/token counts
            )  # fmt: skip

        record, results = await bench.measure(target, server, load)
        record.update(summarise(results, sizes.stream_tokens))
        return finish(record, count if target.chatstream else 0)

    return body


def throughput_scenario(bench: Bench) -> Callable[..., Awaitable[dict[str, Any]]]:
    sizes = bench.sizes

    async def body(target: Target, server: Server) -> dict[str, Any]:
        async def load() -> list[StreamResult]:
            return await spread_streams(
                target, bench.owners, sizes.throughput_streams, sizes.throughput_tokens, 0, 0.1,
                timeout=180,
            )  # fmt: skip

        record, results = await bench.measure(target, server, load)
        record.update(summarise(results, sizes.throughput_tokens))
        return finish(record, sizes.throughput_streams if target.chatstream else 0)

    return body


def setup_scenario(bench: Bench) -> Callable[..., Awaitable[dict[str, Any]]]:
    sizes = bench.sizes

    async def body(target: Target, server: Server) -> dict[str, Any]:
        async def load() -> list[StreamResult]:
            queue = list(range(sizes.setup_streams))
            results: list[StreamResult] = []

            async def worker() -> None:
                while queue:
                    index = queue.pop()
                    results.append(await target.stream(bench.owners[index], 1, 0, timeout=30))

            await asyncio.gather(*(worker() for _ in range(sizes.setup_concurrency)))
            return results

        record, results = await bench.measure(target, server, load)
        record.update(summarise(results, 1))
        latencies = [r.ended - r.started for r in results if r.ended is not None]
        record["latency_p50_ms"] = ms(percentile(latencies, 50))
        record["latency_p99_ms"] = ms(percentile(latencies, 99))
        record["cpu_ms_per_stream"] = round(record["server_cpu_s"] / len(results) * 1000, 2)
        return finish(record, sizes.setup_streams if target.chatstream else 0)

    return body


def idle_scenario(bench: Bench) -> Callable[..., Awaitable[dict[str, Any]]]:
    """Streams open and waiting for a slow model: RSS at half of them open, then all.

    The marginal figure ((all - half) / the second half) leaves out what the first
    streams cost once (pools, caches, the allocator's first arenas).
    """
    sizes = bench.sizes

    async def body(target: Target, server: Server) -> dict[str, Any]:
        count, delay = sizes.idle_streams, sizes.idle_delay
        half = count // 2
        loop = asyncio.get_running_loop()
        before = await settled_rss(server)
        began = loop.time()
        owners = bench.owners[:count]
        opened = (await bench.upstream.astats())["started"]

        async def open_some(group: list[Owner], spread: float, goal: int) -> asyncio.Future[Any]:
            task = asyncio.ensure_future(
                spread_streams(target, group, len(group), 5, 20, spread, delay, timeout=delay + 60)
            )
            while loop.time() - began < delay - 2:
                if (await bench.upstream.astats())["started"] >= goal:
                    break
                await asyncio.sleep(0.1)
            return task

        spread = max(1.0, half / 40)  # no backlog of POSTs: they would count as streams
        first = await open_some(owners[:half], spread, opened + half)
        at_half = await settled_rss(server)
        if bench.tracemalloc:
            await target.get_json("/bench/stats/?allocations=1")
        second = await open_some(owners[half:], spread, opened + count)
        at_all = await settled_rss(server)
        threads, db_files = proc_threads(server.pid), _open_db_files(server)
        allocations = None
        if bench.tracemalloc:
            allocations = (await target.get_json("/bench/stats/?allocations=1"))[1]
        open_streams = (await bench.upstream.astats())["started"] - opened
        sampled = loop.time() - began
        results = await first + await second
        record = summarise(results, 5)
        record.update(
            rss_start_mb=round(before / 1024, 1),
            rss_peak_mb=round(at_all / 1024, 1),
            open_at_sample=open_streams,
            sampled_after_s=round(sampled, 1),
            idle_kb_per_stream=round((at_all - at_half) / max(count - half, 1), 1),
            idle_kb_per_stream_all=round((at_all - before) / max(open_streams, 1), 1),
            threads_at_all=threads,
            db_files_open_at_all=db_files,
        )
        if allocations is not None:
            path = RESULTS / f"allocations-{server.kind}-{target.chatstream}.json"
            path.write_text(json.dumps(allocations.get("allocations"), indent=1))
        if sampled > delay:
            record["note"] = "streams started before all were open: raise idle_delay"
        return record

    return body


def _open_db_files(server: Server) -> int:
    """Open SQLite files: a database connection held by a stream shows here."""
    count = 0
    for fd in Path(f"/proc/{server.pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).endswith(".sqlite3")
    return count


async def settled_rss(server: Server) -> float:
    await asyncio.sleep(0.5)
    samples = []
    for _ in range(5):
        await asyncio.sleep(0.1)
        samples.append(server.rss_kb())
    return statistics.median(samples)


def nonreading_scenario(bench: Bench) -> Callable[..., Awaitable[dict[str, Any]]]:
    """Clients that ask for a long, fast reply and read none of it, then normal readers.

    RSS is sampled once the stalled replies are over upstream (their data can only
    be in the server's buffers by then), before the readers start.
    """
    sizes = bench.sizes

    async def body(target: Target, server: Server) -> dict[str, Any]:
        stalled_owners = bench.owners[: sizes.nonreading]
        readers = bench.owners[sizes.nonreading : sizes.nonreading + sizes.readers]
        hold = sizes.nonreading_hold
        stalled_rss: list[float] = []

        async def load() -> list[StreamResult]:
            stalled = asyncio.ensure_future(
                asyncio.gather(
                    *(
                        target.stream(owner, sizes.nonreading_tokens, 0, read=False, hold=hold)
                        for owner in stalled_owners
                    )
                )
            )
            await asyncio.sleep(hold / 2)
            stalled_rss.append(server.rss_kb())
            reading = await spread_streams(
                target, readers, len(readers), sizes.reader_tokens, 20, 1.0
            )
            bench_stalled[:] = await stalled
            return reading

        bench_stalled: list[StreamResult] = []
        record, results = await bench.measure(target, server, load)
        record.update(summarise(results, sizes.reader_tokens))
        grown = stalled_rss[0] - record["rss_start_mb"] * 1024
        record["nonreader_kb_each"] = round(grown / sizes.nonreading, 1)
        record["nonreader_errors"] = sum(1 for r in bench_stalled if r.error)
        if target.chatstream:
            record["nonreader_replies_complete"] = await _completed(
                target, bench_stalled, stalled_owners
            )
        return record

    return body


async def _completed(target: Target, results: list[StreamResult], owners: list[Owner]) -> int:
    """How many of the stalled readers' replies were finished and saved anyway."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    complete = 0
    while loop.time() < deadline:
        complete = 0
        for result, owner in zip(results, owners, strict=True):
            if result.message_id:
                status, payload = await target.get_json(
                    f"/api/messages/{result.message_id}/", owner
                )
                complete += status == 200 and payload.get("status") == "complete"
        if complete == len(results):
            break
        await asyncio.sleep(0.5)
    return complete


# --- floors: the layers under chatstream, alone (bench/floor.py) ----------------------

FLOORS = {
    "floor: asgi": ("bench.floor:asgi_application", "/?"),
    "floor: django": (DJANGO_APP, "/bench/floor/?release=1&"),
    "floor: django, thread kept": (DJANGO_APP, "/bench/floor/?"),
    "floor: django + SDK": (DJANGO_APP, "/bench/floor/?release=1&upstream=1&"),
}
_FLOOR_BATCH = 50  # idle floor streams opened at once
_FLOOR_OPEN_TIMEOUT = 60.0  # seconds for one batch to open


async def _floor_open(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A GET whose first event has arrived."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")  # the headers
    await reader.readuntil(b"\n\n")  # the first event
    return reader, writer


async def _floor_stream(port: int, path: str, delay: float) -> int:
    """One floor stream to its ``done``: the deltas it got, or -1 if it failed."""
    await asyncio.sleep(delay)
    try:
        reader, writer = await _floor_open(port, path)
    except (OSError, asyncio.IncompleteReadError):
        return -1
    try:
        deltas, pending = 0, b""
        while data := await reader.read(65536):
            *events, pending = (pending + data).split(b"\n\n")
            for event in events:
                if b"event: done" in event:
                    return deltas
                deltas += b"event: delta" in event
        return -1
    except OSError:
        return -1
    finally:
        writer.close()


def floor_idle_scenario(bench: Bench, path: str) -> Callable[..., Awaitable[dict[str, Any]]]:
    """The idle scenario's measure for a floor: streams open, half and then all."""
    count = bench.sizes.idle_streams

    async def body(target: Target, server: Server) -> dict[str, Any]:
        writers: list[asyncio.StreamWriter] = []

        async def open_some(number: int) -> None:
            for start in range(0, number, _FLOOR_BATCH):
                size = min(_FLOOR_BATCH, number - start)
                batch = asyncio.gather(*(_floor_open(server.port, path) for _ in range(size)))
                writers.extend(w for _, w in await asyncio.wait_for(batch, _FLOOR_OPEN_TIMEOUT))

        try:
            await open_some(WARM_OWNERS)  # what the first requests cost once: imports, pools
            before = await settled_rss(server)
            await open_some(count // 2)
            at_half = await settled_rss(server)
            await open_some(count - count // 2)
            at_all = await settled_rss(server)
            threads = proc_threads(server.pid)
        finally:
            for writer in writers:
                writer.close()
        return {
            "streams": count,
            "ok": len(writers) - WARM_OWNERS,
            "rss_start_mb": round(before / 1024, 1),
            "rss_peak_mb": round(at_all / 1024, 1),
            "open_at_sample": len(writers) - WARM_OWNERS,
            "idle_kb_per_stream": round((at_all - at_half) / (count - count // 2), 1),
            "idle_kb_per_stream_all": round((at_all - before) / count, 1),
            "threads_at_all": threads,
        }

    return body


def floor_streams_scenario(
    bench: Bench, path: str, count: int
) -> Callable[..., Awaitable[dict[str, Any]]]:
    """The streams scenario's load for a floor: server CPU per delta."""
    sizes = bench.sizes
    path += f"events={sizes.stream_tokens}&rate={sizes.rate:g}"

    async def body(target: Target, server: Server) -> dict[str, Any]:
        await asyncio.gather(*(_floor_stream(server.port, path, 0) for _ in range(WARM_OWNERS)))
        cpu_before, began = proc_cpu(server.pid), time.monotonic()
        load = (_floor_stream(server.port, path, i / count) for i in range(count))
        got = await asyncio.wait_for(asyncio.gather(*load), sizes.stream_tokens / sizes.rate + 240)
        cpu, wall = proc_cpu(server.pid) - cpu_before, time.monotonic() - began
        ok = sum(1 for deltas in got if deltas == sizes.stream_tokens)
        return finish(
            {
                "streams": count,
                "ok": ok,
                "errors": count - ok,
                "server_cpu_s": round(cpu, 3),
                "wall_s": round(wall, 2),
                "tokens": sum(deltas for deltas in got if deltas > 0),
            },
            0,
        )

    return body


# --- the matrix -----------------------------------------------------------------------


async def run_matrix(bench: Bench, servers: list[str], scenarios: list[str]) -> None:
    sizes = bench.sizes
    for kind in servers:
        print(f"{kind}:")
        for scenario in scenarios:
            if scenario == "streams":
                for count in sizes.streams:
                    for variant in VARIANTS:
                        await bench.run(
                            kind, f"streams-{count}", variant, streams_scenario(bench, count)
                        )
            elif scenario == "throughput":
                for variant in VARIANTS:
                    await bench.run(kind, "throughput", variant, throughput_scenario(bench))
            elif scenario == "setup":
                for variant in VARIANTS:
                    await bench.run(kind, "setup", variant, setup_scenario(bench))
            elif scenario == "idle":
                for variant in VARIANTS:
                    await bench.run(kind, "idle", variant, idle_scenario(bench))
            elif scenario == "nonreading":
                for variant in VARIANTS:
                    await bench.run(kind, "nonreading", variant, nonreading_scenario(bench))
            elif scenario == "floors":
                big = max(sizes.streams)
                for variant, (app, path) in FLOORS.items():
                    idle = floor_idle_scenario(bench, path + "events=0")
                    await bench.run(kind, "idle", variant, idle, app)
                    paced = floor_streams_scenario(bench, path, big)
                    await bench.run(kind, f"streams-{big}", variant, paced, app)
            elif scenario == "redis" and kind == servers[0]:
                if not bench.redis_url:
                    continue
                count = max(sizes.streams)
                for variant in ("chatstream", "chatstream+redis"):
                    await bench.run(kind, "throughput", variant, throughput_scenario(bench))
                for variant in ("chatstream", "chatstream+redis"):
                    await bench.run(
                        kind, f"streams-{count}", variant, streams_scenario(bench, count)
                    )


# --- reporting ------------------------------------------------------------------------


def short(record: dict[str, Any]) -> str:
    if "failure" in record:
        return f"FAILED {record['failure'][:300]}"
    parts = [f"ok {record.get('ok')}/{record.get('streams')}"]
    for key in ("ttft_p99_ms", "cpu_us_per_token", "tokens_per_s", "idle_kb_per_stream"):
        if record.get(key) is not None:
            parts.append(f"{key}={record[key]}")
    if record.get("error_kinds"):
        parts.append(f"errors={record['error_kinds']}")
    parts.append(f"({record['run_s']} s)")
    return " ".join(parts)


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (server, scenario, variant): the median of each number over repeats."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["server"], run["scenario"], run["variant"]), []).append(run)
    rows = []
    for (kind, scenario, variant), group in groups.items():
        row: dict[str, Any] = {"server": kind, "scenario": scenario, "variant": variant}
        row["repeats"] = len(group)
        good = [r for r in group if "failure" not in r]
        if not good:
            row["failure"] = group[0]["failure"]
            rows.append(row)
            continue
        for key in good[0]:
            values = [r.get(key) for r in good]
            if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                row[key] = statistics.median(values)
            elif key not in row:
                row[key] = values[0]
        rows.append(row)
    return rows


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| server | scenario | variant | ok / streams | TTFT p50 / p99 ms | gap p99 ms "
        "| CPU µs/token | tokens/s | RSS start → peak MB | DB writes/reply | scenario figure |"
    )
    lines = [head, "|" + "---|" * 11]
    for row in rows:
        if "failure" in row:
            lines.append(
                f"| {row['server']} | {row['scenario']} | {row['variant']} | failed: "
                f"{row['failure'][:120]} |" + " |" * 7
            )
            continue
        figure = ""
        if "cpu_ms_per_stream" in row:
            figure = (
                f"{row['cpu_ms_per_stream']:.2f} ms CPU/stream; "
                f"POST→done p50 {_fmt(row.get('latency_p50_ms'))} ms"
            )
        elif "idle_kb_per_stream" in row:
            figure = (
                f"{row['idle_kb_per_stream']:.1f} KB/open stream ({row.get('open_at_sample')} open)"
            )
        elif "nonreader_kb_each" in row:
            figure = f"+{row['nonreader_kb_each']:.0f} KB per non-reader"
            if "nonreader_replies_complete" in row:
                figure += f"; {row['nonreader_replies_complete']} replies saved complete"
        elif row.get("threads_peak"):
            figure = f"peak {row['threads_peak']} threads"
        if row.get("redis_cpu_us_per_token") is not None:
            figure += f"; redis-server {row['redis_cpu_us_per_token']:.1f} µs/token"
        lines.append(
            f"| {row['server']} | {row['scenario']} | {row['variant']} "
            f"| {_fmt(row.get('ok'))} / {_fmt(row.get('streams'))} "
            f"| {_fmt(row.get('ttft_p50_ms'))} / {_fmt(row.get('ttft_p99_ms'))} "
            f"| {_fmt(row.get('gap_p99_ms'))} | {_fmt(row.get('cpu_us_per_token'))} "
            f"| {_fmt(row.get('tokens_per_s'))} "
            f"| {_fmt(row.get('rss_start_mb'), 1)} → {_fmt(row.get('rss_peak_mb'), 1)} "
            f"| {_fmt(row.get('db_writes_per_reply'), 2)} | {figure} |"
        )
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]], sizes: Sizes) -> list[dict[str, Any]]:
    found = {(r["server"], r["scenario"], r["variant"]): r for r in rows if "failure" not in r}
    checks: list[dict[str, Any]] = []

    def check(name: str, kind: str, measured: Any, passed: bool | None) -> None:
        checks.append({"target": name, "server": kind, "measured": measured, "met": passed})

    big = f"streams-{max(sizes.streams)}"
    for kind in sorted({r["server"] for r in rows}):
        mine = found.get((kind, big, "chatstream"))
        base = found.get((kind, big, "baseline"))
        if mine:
            check(
                f"{big}: 0 errors, TTFT p99 < 250 ms",
                kind,
                f"{mine['errors']:g} errors, p99 {_fmt(mine['ttft_p99_ms'])} ms",
                mine["errors"] == 0 and (mine["ttft_p99_ms"] or 1e9) < 250,
            )
        for scenario in (big, "throughput"):
            mine = found.get((kind, scenario, "chatstream"))
            base = found.get((kind, scenario, "baseline"))
            if mine and base and mine.get("cpu_us_per_token") and base.get("cpu_us_per_token"):
                ratio = mine["cpu_us_per_token"] / base["cpu_us_per_token"]
                check(
                    f"{scenario}: CPU/token ≤ 1/3 of baseline",
                    kind,
                    f"{mine['cpu_us_per_token']} vs {base['cpu_us_per_token']} µs "
                    f"(ratio {ratio:.2f})"
                    + _floor(found, kind, scenario, "cpu_us_per_token", "µs"),
                    ratio <= 1 / 3,
                )
        relay = {v: _relay_cpu(found, kind, big, v, sizes) for v in ("chatstream", "baseline")}
        if None not in relay.values():
            # Not a target: where the paced CPU goes, set-up (POST, stream request,
            # finalise) apart from relaying tokens.
            check(
                f"{big}: relay CPU/token, the setup scenario's CPU/stream taken out",
                kind,
                f"{relay['chatstream']:.1f} vs {relay['baseline']:.1f} µs "
                f"(ratio {relay['chatstream'] / relay['baseline']:.2f})",
                None,
            )
        mine = found.get((kind, "throughput", "chatstream"))
        base = found.get((kind, "throughput", "baseline"))
        if mine and base and mine.get("tokens_per_s") and base.get("tokens_per_s"):
            ratio = mine["tokens_per_s"] / base["tokens_per_s"]
            check(
                "throughput ≥ 3× baseline",
                kind,
                f"{mine['tokens_per_s']} vs {base['tokens_per_s']} tokens/s ({ratio:.2f}×)",
                ratio >= 3,
            )
        mine = found.get((kind, big, "chatstream"))
        if mine and mine.get("db_writes_per_reply") is not None:
            # Checkpoints follow the reply's real life, which overload stretches far
            # beyond the upstream's pace: count against the measured median.
            streaming = mine.get("life_p50_s") or sizes.stream_tokens / sizes.rate
            allowed = 3 + math.floor(streaming / CHECKPOINT_INTERVAL)
            check(
                f"{big}: DB writes/reply ≤ 3 + 1 per {CHECKPOINT_INTERVAL:g} s streamed",
                kind,
                f"{mine['db_writes_per_reply']:.2f} (allowed {allowed} for {streaming:g} s): "
                + ", ".join(
                    f"{k} {v / max(mine['ok'], 1):.2f}" for k, v in mine["db_writes"].items()
                ),
                mine["db_writes_per_reply"] <= allowed,
            )
        mine = found.get((kind, "idle", "chatstream"))
        if mine:
            check(
                "idle memory per open stream < 50 KB",
                kind,
                f"{mine['idle_kb_per_stream']} KB"
                + _floor(found, kind, "idle", "idle_kb_per_stream", "KB"),
                mine["idle_kb_per_stream"] < 50,
            )
        for scenario in ("throughput", big):
            memory = found.get((kind, scenario, "chatstream"))
            redis = found.get((kind, scenario, "chatstream+redis"))
            if (
                memory
                and redis
                and memory.get("cpu_us_per_token")
                and redis.get("cpu_us_per_token")
            ):
                ratio = redis["cpu_us_per_token"] / memory["cpu_us_per_token"]
                check(
                    f"{scenario}: Redis CPU/token ≤ 1.5× memory",
                    kind,
                    f"{redis['cpu_us_per_token']:.1f} vs {memory['cpu_us_per_token']:.1f} µs "
                    f"({ratio:.2f}×)",
                    ratio <= 1.5,
                )
    return checks


def _floor(
    found: dict[tuple[str, str, str], dict[str, Any]], kind: str, scenario: str, key: str, unit: str
) -> str:
    """What a relay on the SDK alone measured there: the floor under the target."""
    floor = found.get((kind, scenario, "floor: django + SDK"))
    if not floor or floor.get(key) is None:
        return ""
    return f"; the floor, a Django stream on the SDK doing nothing else: {floor[key]} {unit}"


def _relay_cpu(
    found: dict[tuple[str, str, str], dict[str, Any]],
    kind: str,
    scenario: str,
    variant: str,
    sizes: Sizes,
) -> float | None:
    paced, setup = found.get((kind, scenario, variant)), found.get((kind, "setup", variant))
    if not paced or not setup or not paced.get("cpu_us_per_token"):
        return None
    if setup.get("cpu_ms_per_stream") is None:
        return None
    return paced["cpu_us_per_token"] - setup["cpu_ms_per_stream"] * 1000 / sizes.stream_tokens


def targets_table(checks: list[dict[str, Any]]) -> str:
    lines = ["| target | server | measured | met |", "|---|---|---|---|"]
    for c in checks:
        met = {True: "yes", False: "**no**", None: "—"}[c["met"]]
        lines.append(f"| {c['target']} | {c['server']} | {c['measured']} | {met} |")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------


def raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < 4096:
        print(f"warning: only {wanted} open files allowed; 1000 streams need about 3000")


def cores() -> tuple[int | None, int | None]:
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2 or not shutil.which("taskset"):
        print("warning: fewer than 2 cores (or no taskset): processes are not pinned")
        return None, None
    return available[0], available[1]


def prepare(workdir: Path, sizes: Sizes) -> tuple[Path, list[Owner]]:
    """One migrated, seeded database with an owner and conversation per stream."""
    template = workdir / "template.sqlite3"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "REDIS", "DJANGO"))}
    env.update(
        DJANGO_SETTINGS_MODULE="bench.settings",
        DJANGO_SECRET_KEY="bench-secret-key-not-for-production",
        DATABASE_URL=f"sqlite:///{template}",
        OPENAI_BASE_URL="http://127.0.0.1:9/v1",
        CHATSTREAM_MODEL="bench-model",
    )
    for command in (["manage.py", "migrate", "-v0"], ["manage.py", "chatstream_seed"]):
        subprocess.run([PYTHON, *command], cwd=ROOT, env=env, check=True, capture_output=True)
    owners_file = workdir / "owners.json"
    subprocess.run(
        [PYTHON, "-m", "bench.prepare", str(sizes.owners), str(owners_file)],
        cwd=ROOT,
        env=env,
        check=True,
    )
    owners = [Owner(**row) for row in json.loads(owners_file.read_text())]
    return template, owners


def redis_setup(scenarios: list[str], core: int | None, workdir: Path) -> tuple[str, Any]:
    if "redis" not in scenarios:
        return "", None
    if not (ROOT / "chatstream" / "replylog" / "redis.py").exists():
        print("Redis scenario skipped: chatstream/replylog/redis.py does not exist yet.")
        return "", None
    url = os.environ.get("REDIS_URL", "")
    if url:
        if not url.startswith("redis://127.0.0.1"):
            print(f"Redis scenario skipped: REDIS_URL must be on 127.0.0.1, not {url!r}.")
            return "", None
        print(f"Redis scenario on {url} (REDIS_URL).")
        return url, None
    if shutil.which("redis-server"):
        redis = Redis(core, workdir)
        print(f"Redis scenario on a private redis-server at {redis.url}.")
        return redis.url, redis
    print(
        "Redis scenario skipped: set REDIS_URL=redis://127.0.0.1:6379/<db> or install redis-server."
    )
    return "", None


def main() -> None:
    parser = argparse.ArgumentParser(
        description="chatstream against a straightforward Django relay (see bench/run.py)."
    )
    parser.add_argument("--quick", action="store_true", help="smaller scenarios, daphne only")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated: {','.join(SCENARIOS)}"
    )
    parser.add_argument("--servers", default=None, help="daphne,uvicorn (--quick: daphne)")
    parser.add_argument(
        "--streams", default=None, help="concurrent stream counts, e.g. 100,500,1000"
    )
    parser.add_argument("--repeat", type=int, default=1, help="run the matrix N times; medians")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run chatstream servers under cProfile (slower; bench/results/profile-*.prof)",
    )
    parser.add_argument(
        "--py-spy",
        action="store_true",
        help="sample every server thread with py-spy during each scenario "
        "(bench/results/profile-*.txt, collapsed stacks)",
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace the idle scenario's allocations (slow; bench/results/allocations-*.json)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()

    sizes = QUICK if args.quick else FULL
    if args.streams:
        sizes = dataclasses.replace(sizes, streams=tuple(int(n) for n in args.streams.split(",")))
    if args.tracemalloc:  # set-up is several times slower while every allocation is traced
        sizes = dataclasses.replace(sizes, idle_delay=sizes.idle_delay * 4)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    servers = (args.servers or ("daphne" if args.quick else "daphne,uvicorn")).split(",")

    raise_open_files()
    server_core, client_core = cores()
    if client_core is not None:
        os.sched_setaffinity(0, {client_core})
    workdir = Path(tempfile.mkdtemp(prefix="chatstream-bench-"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    upstream = redis = None
    try:
        print(f"Preparing {sizes.owners} owners in {workdir} ...", flush=True)
        template, owners = prepare(workdir, sizes)
        upstream = Upstream(client_core)
        redis_url, redis = redis_setup(scenarios, client_core, workdir)
        bench = Bench(
            sizes, workdir, template, owners, upstream, server_core,
            redis_url=redis_url, redis_pid=redis.process.pid if redis else None,
            profile=args.profile, py_spy=args.py_spy, tracemalloc=args.tracemalloc,
        )  # fmt: skip
        for repeat in range(args.repeat):
            if args.repeat > 1:
                print(f"Repeat {repeat + 1} of {args.repeat}")
            asyncio.run(run_matrix(bench, servers, scenarios))
        report(bench, sizes, args, time.monotonic() - began)
    finally:
        if upstream is not None:
            upstream.stop()
        if redis is not None:
            redis.stop()
        if args.keep:
            print(f"Work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def report(bench: Bench, sizes: Sizes, args: argparse.Namespace, elapsed: float) -> None:
    rows = medians(bench.runs)
    checks = targets(rows, sizes)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "quick": args.quick,
        "repeat": args.repeat,
        "python": sys.version.split()[0],
        "cores": os.cpu_count(),
        "pinned": bench.server_core is not None,
        "elapsed_s": round(elapsed),
        "sizes": sizes.__dict__,
    }
    (RESULTS / "latest.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "targets": checks}, indent=1) + "\n"
    )
    markdown = (
        f"Benchmark of {meta['date']} ({'quick' if args.quick else 'full'}, "
        f"medians of {args.repeat}; server pinned to one core; {round(elapsed)} s)\n\n"
        + table(rows)
        + "\n\nTargets\n\n"
        + targets_table(checks)
        + "\n"
    )
    (RESULTS / "latest.md").write_text(markdown)
    print()
    print(markdown)


if __name__ == "__main__":
    main()
