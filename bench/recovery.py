"""How long ``manage.py chatstream_recover`` takes for many orphaned replies.

Each round makes ``--orphans`` streaming replies in a fresh database. On the Redis
log, a process opens every reply's log, writes some text to it, and is killed as
``kill -9`` would (their leases lapse one ``lease_ttl`` later); on the memory log the
rows alone are the orphans. Then it times the recover command from its start to
its exit (process start-up included, about a second or two) and checks that every
reply ended ``interrupted`` with the text its log (or checkpoint) held.

    .venv/bin/python bench/recovery.py
    taskset -c 0 .venv/bin/python bench/recovery.py --orphans 500 --rounds 5 --log redis

Everything listens on 127.0.0.1: a redis-server of its own on a free port, SQLite
files under a temporary folder (or ``--database-url`` for PostgreSQL; the script
makes and drops one database per round there).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent

# Scripts for ``manage.py shell -c``; tests/test_ending.py makes its orphans with them too.
LEASE_TTL = 1.0

MAKE_ORPHANS = """
from datetime import timedelta
from django.utils import timezone
from chatstream.models import Conversation, Message
rows = Conversation.objects.bulk_create([Conversation(anonymous_owner="o") for _ in range({n})])
old = timezone.now() - timedelta(minutes=5)
Message.objects.bulk_create([Message(conversation=c, role="assistant", status="streaming",
    content="checkpointed", created_at=old) for c in rows])
"""

HOLD_THEIR_LOGS = """
import asyncio
from chatstream.models import Message
from chatstream.replylog import get_reply_log
ids = [str(pk) for pk in Message.objects.filter(status="streaming").values_list("pk", flat=True)]
async def hold():
    log = get_reply_log()
    for reply_id in ids:
        writer = await log.open(reply_id, "a:o")
        await writer.append("checkpointed and more")
    await asyncio.sleep(0.5)
    print("holding", flush=True)
    await asyncio.sleep(600)
asyncio.run(hold())
"""

_COUNT = (
    "from chatstream.models import Message; "
    "print(Message.objects.filter(status='interrupted', content={text!r}).count())"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if result.returncode:
        raise SystemExit(result.stderr)
    return result.stdout


def _round(env: dict[str, str], orphans: int) -> float:
    _manage(env, "migrate", "-v0")
    _manage(env, "shell", "-v0", "-c", MAKE_ORPHANS.format(n=orphans))
    text = "checkpointed"
    if "REDIS_URL" in env:
        holder = subprocess.Popen(
            [sys.executable, "manage.py", "shell", "-v0", "-c", HOLD_THEIR_LOGS],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
        time.sleep(LEASE_TTL + 0.5)
        text = "checkpointed and more"
    started = time.monotonic()
    _manage(env, "chatstream_recover")
    took = time.monotonic() - started
    done = int(_manage(env, "shell", "-v0", "-c", _COUNT.format(text=text)).strip())
    if done != orphans:
        raise SystemExit(f"only {done} of {orphans} replies were recovered with their text")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orphans", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--log", choices=["memory", "redis", "both"], default="both")
    parser.add_argument("--database-url", default="", help="PostgreSQL server URL, no database")
    options = parser.parse_args()
    logs = ["memory", "redis"] if options.log == "both" else [options.log]
    with tempfile.TemporaryDirectory() as folder:
        port = _free_port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", folder],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.5)
        try:
            for log in logs:
                times = []
                for i in range(options.rounds):
                    env = {
                        **os.environ,
                        "DJANGO_SETTINGS_MODULE": "tests.live_settings",
                        "DJANGO_SECRET_KEY": "bench-only",
                        "DJANGO_LOG_LEVEL": "WARNING",
                        "TEST_LEASE_TTL": str(LEASE_TTL),
                        "DATABASE_URL": f"sqlite:///{folder}/{log}-{i}.sqlite3",
                    }
                    if options.database_url:
                        env["DATABASE_URL"] = _postgres(options.database_url, f"{log}_{i}")
                    if log == "redis":
                        env["REDIS_URL"] = f"redis://127.0.0.1:{port}/{i % 16}"
                    times.append(_round(env, options.orphans))
                print(
                    f"{log:6} log: {options.orphans} orphans recovered in "
                    f"median {statistics.median(times):.2f} s "
                    f"(runs: {', '.join(f'{t:.2f}' for t in times)})"
                )
        finally:
            redis.terminate()
            redis.wait()


def _postgres(server: str, name: str) -> str:
    database = f"chatstream_bench_recovery_{name}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{database}"')
    return f"{server}/{database}"


if __name__ == "__main__":
    main()
