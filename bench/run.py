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
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.client import Owner  # noqa: E402
from bench.harness import FULL, QUICK, RESULTS, SCENARIOS, Bench  # noqa: E402
from bench.processes import (  # noqa: E402
    PYTHON,
    Redis,
    Upstream,
    cores,
    raise_open_files,
    work_directory,
)
from bench.report import report  # noqa: E402
from bench.scenarios import run_matrix  # noqa: E402


def prepare(workdir: Path, count: int, turns: int = 0) -> tuple[Path, list[Owner]]:
    """One migrated, seeded database with ``count`` owners, each with a conversation
    of ``turns`` earlier question-and-answer pairs."""
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
        [PYTHON, "-m", "bench.prepare", str(count), str(owners_file), str(turns)],
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
    parser.add_argument("--servers", default=None, help="daphne,uvicorn,granian (--quick: daphne)")
    parser.add_argument(
        "--streams", default=None, help="concurrent stream counts, e.g. 100,500,1000"
    )
    parser.add_argument("--steps", default=None, help="capacity steps, e.g. 100,200,300")
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
    if args.steps:
        steps = tuple(int(n) for n in args.steps.split(","))
        sizes = dataclasses.replace(sizes, capacity_steps=steps)
    if args.tracemalloc:  # set-up is several times slower while every allocation is traced
        sizes = dataclasses.replace(sizes, idle_delay=sizes.idle_delay * 4)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    servers = (args.servers or ("daphne" if args.quick else "daphne,uvicorn,granian")).split(",")

    raise_open_files()
    server_core, client_core = cores()
    if client_core is not None:
        os.sched_setaffinity(0, {client_core})
    RESULTS.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    upstream = redis = None
    with work_directory("chatstream-bench-", args.keep) as workdir:
        try:
            print(f"Preparing {sizes.owners} owners in {workdir} ...", flush=True)
            template, owners = prepare(workdir, sizes.owners)
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


if __name__ == "__main__":
    main()
