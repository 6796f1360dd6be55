"""The scenarios: each a load for one server, measured and summarised as one record."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.client import Owner, StreamResult, Target, percentile
from bench.harness import PACING_OFF, RESULTS, WARM_OWNERS, Bench, finish, holds_slo, ms, summarise
from bench.processes import DJANGO_APP, Server, proc_cpu, proc_threads

VARIANTS = ("chatstream", "baseline")


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


def capacity_scenario(bench: Bench, count: int) -> Callable[..., Awaitable[dict[str, Any]]]:
    """``count`` visitors sending at even intervals over the arrival window, paced replies.

    Each is the page's flow: the POST that streams its reply (the baseline: its one
    GET); TTFT runs from the send.
    """
    sizes = bench.sizes

    async def body(target: Target, server: Server) -> dict[str, Any]:
        paced = sizes.stream_tokens / sizes.rate

        async def load() -> list[StreamResult]:
            return await spread_streams(
                target, bench.owners, count, sizes.stream_tokens, sizes.rate,
                sizes.capacity_arrival, timeout=paced + 120,
            )  # fmt: skip

        record, results = await bench.measure(target, server, load)
        record.update(summarise(results, sizes.stream_tokens))
        record["holds_slo"] = holds_slo(record)
        return finish(record, count if target.chatstream else 0)

    return body


async def capacity_steps(bench: Bench, kind: str, variant: str) -> None:
    """Steps the load up until a step misses the SLO: the step before is the capacity."""
    for count in bench.sizes.capacity_steps:
        load = capacity_scenario(bench, count)
        record = await bench.run(kind, f"capacity-{count}", variant, load)
        if not record.get("holds_slo"):
            return


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


async def floor_open(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
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
        reader, writer = await floor_open(port, path)
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
                batch = asyncio.gather(*(floor_open(server.port, path) for _ in range(size)))
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
            if scenario == "capacity":
                # Pacing off beside it on the first server: what that lever buys.
                extra = (PACING_OFF,) if kind == servers[0] else ()
                for variant in (*VARIANTS, *extra):
                    await capacity_steps(bench, kind, variant)
            elif scenario == "streams":
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
