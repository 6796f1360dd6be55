"""What every scenario shares: the sizes, a fresh server per run, and its measures."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.client import Owner, StreamResult, Target, percentile
from bench.environment import django_environment
from bench.processes import DJANGO_APP, ROOT, RssSampler, Server, Upstream, proc_cpu, proc_times

RESULTS = ROOT / "bench" / "results"
PACING_OFF = "chatstream, pacing off"  # FLUSH_INTERVAL_MAX = 0: what adaptive pacing buys
WARM_OWNERS = 10


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
    # capacity: streams arriving evenly over ``capacity_arrival`` seconds, stepped up
    capacity_steps: tuple[int, ...] = (50, 100, 150, 200, 300, 400, 500, 600, 800, 1000)
    capacity_arrival: float = 10.0

    @property
    def owners(self) -> int:
        most = max(*self.streams, *self.capacity_steps, self.setup_streams, self.idle_streams)
        return most + WARM_OWNERS


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
    capacity_steps=(50, 100, 200, 300, 400),
)
SCENARIOS = (
    "capacity", "streams", "throughput", "setup", "idle", "nonreading", "floors", "redis",
)  # fmt: skip

#: The service level a capacity step must hold (bench/README.md).
SLO_TTFT_P99_MS = 1000.0
SLO_GAP_P99_MS = 250.0


def holds_slo(record: dict[str, Any]) -> bool:
    """Every reply exact and complete, TTFT p99 and the gap p99 within the SLO."""
    if "failure" in record or not record.get("streams") or record.get("ok") != record["streams"]:
        return False
    ttft, gap = record.get("ttft_p99_ms"), record.get("gap_p99_ms")
    return ttft is not None and ttft <= SLO_TTFT_P99_MS and (gap or 0) <= SLO_GAP_P99_MS


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

    def server_env(self, redis_url: str, db: Path, admission: bool, variant: str) -> dict[str, str]:
        skip = ("OPENAI", "AZURE", "REDIS", "DJANGO", "CHATSTREAM")
        env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
        env.update(django_environment(db, self.upstream.port), PYTHONUNBUFFERED="1")
        if not admission:  # the baseline's developer has no admission limit in front
            env["DJANGO_MAX_ACTIVE_REQUESTS"] = "0"
        if redis_url:
            env["REDIS_URL"] = redis_url
        if variant == PACING_OFF:
            env["BENCH_PACING"] = "off"
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
        variant: str = "chatstream",
    ) -> Server:
        self.counter += 1
        db = self.workdir / f"db-{self.counter}.sqlite3"
        shutil.copyfile(self.template, db)
        log = self.workdir / f"server-{self.counter}-{kind}.log"
        env = self.server_env(redis_url, db, admission, variant)
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
            name = "-".join(re.findall(r"\w+", f"{kind} {scenario} {variant}"))
            out = RESULTS / f"profile-{name}.prof"
            server = self.new_server(
                kind,
                self.redis_url if redis else "",
                profile=out if profile else None,
                admission=variant != "baseline",
                app=app,
                variant=variant,
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
