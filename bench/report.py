"""Reporting: medians over repeats, the results table, and the targets checked."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any

from bench.harness import RESULTS, Bench, Sizes

CHECKPOINT_INTERVAL = 5.0  # chatstream's default, which bench/settings.py keeps


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
