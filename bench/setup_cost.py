"""CPU per reply set-up, in one process and one at a time: quieter than a load run.

Drives the demo project's ASGI application directly (no server, no sockets of its
own) through what the page does for one reply: one POST that asks for an event
stream and reads it until ``done`` (``--two-requests``: the POST's 201, then a GET
of its ``stream_url``), against the bench's fake upstream sending one token. Prints the
process's CPU time (every thread) per reply for chatstream and for the baseline
relay, each the median of ``--rounds`` rounds of ``--replies`` replies.
``--count`` prints, instead, what one reply does: its hops to a thread
(``sync_to_async`` calls), the threads it starts, its database queries and its
round trips to Redis (one per command, script or pipeline sent). ``--parts`` splits the
CPU: this process's event loop, chatstream's database units (``chatstream.dbpool``,
where the relay has none) and the rest, other threads (a request's own thread).
``--history N`` gives every reply N earlier question-and-answer turns (the
baseline sends the same turns to the SDK); ``--database-url`` and ``--redis-url``
run it on PostgreSQL and with Redis, as a production worker would.

    .venv/bin/python bench/setup_cost.py
    .venv/bin/python bench/setup_cost.py --history 20
    .venv/bin/python bench/setup_cost.py --two-requests
    .venv/bin/python bench/setup_cost.py --parts
    py-spy record --gil -f raw -o setup.txt -- .venv/bin/python bench/setup_cost.py

Not a load test: it leaves out the HTTP server's share, and shows where a change
to the request path moves the cost, measured side by side in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.environment import django_environment  # noqa: E402
from bench.upstream import expected_text, prompt  # noqa: E402


async def call(
    app: Any, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, bytes]:
    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    sent = False
    finished = asyncio.Event()
    status, parts = 0, []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                finished.set()

    await app(scope, receive, send)
    return status, b"".join(parts)


def _check_stream(status: int, body: bytes) -> None:
    if status != 200 or b"event: done" not in body or expected_text(1).encode() not in body:
        raise RuntimeError(f"stream answered {status}: {body[:300]!r}")


async def chatstream_reply(app: Any, owner: dict[str, str]) -> None:
    """The page's way: one POST whose response is the reply's stream."""
    cookie = f"sessionid={owner['session']}; csrftoken={owner['csrf']}"
    status, body = await call(
        app,
        "POST",
        f"/api/conversations/{owner['conversation']}/messages/",
        {"cookie": cookie, "x-csrftoken": owner["csrf"], "content-type": "application/json",
         "accept": "text/event-stream", "host": "127.0.0.1"},
        json.dumps({"content": prompt(1, 0)}).encode(),
    )  # fmt: skip
    if b"event: started" not in body:
        raise RuntimeError(f"POST answered {status}: {body[:300]!r}")
    _check_stream(status, body)


async def chatstream_two_requests(app: Any, owner: dict[str, str]) -> None:
    """The POST's 201, then a GET of its ``stream_url``."""
    cookie = f"sessionid={owner['session']}; csrftoken={owner['csrf']}"
    status, body = await call(
        app,
        "POST",
        f"/api/conversations/{owner['conversation']}/messages/",
        {"cookie": cookie, "x-csrftoken": owner["csrf"], "content-type": "application/json",
         "host": "127.0.0.1"},
        json.dumps({"content": prompt(1, 0)}).encode(),
    )  # fmt: skip
    if status != 201:
        raise RuntimeError(f"POST answered {status}: {body[:200]!r}")
    url = json.loads(body)["stream_url"]
    _check_stream(*await call(app, "GET", url, {"cookie": cookie, "host": "127.0.0.1"}))


async def baseline_reply(app: Any, owner: dict[str, str]) -> None:
    path = f"/bench/baseline/?prompt={quote(prompt(1, 0))}&turns={owner['turns']}"
    status, body = await call(app, "GET", path, {"host": "127.0.0.1"})
    if status != 200 or expected_text(1).encode() not in body:
        raise RuntimeError(f"baseline answered {status}: {body[:300]!r}")


def warm_sessions(owners: list[dict[str, Any]]) -> None:
    """Read each visitor's session once, as the page's GET did before they sent: with
    sessions in a cache, a send then finds its session there."""
    from django.conf import settings

    store = importlib.import_module(settings.SESSION_ENGINE).SessionStore
    for owner in owners:
        store(owner["session"]).load()


def count_calls() -> dict[str, int]:
    """Counts hops to a thread, thread starts, queries and Redis round trips, from now on."""
    import threading

    from asgiref.sync import SyncToAsync
    from django.db.backends.utils import CursorWrapper
    from redis.asyncio.connection import AbstractConnection
    from redis.connection import AbstractConnection as SyncConnection

    from chatstream import compiled

    counts = {"hops": 0, "threads": 0, "queries": 0, "redis": 0}

    def counting(name: str, method: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return method(*args, **kwargs)

        return wrapper

    SyncToAsync.__call__ = counting("hops", SyncToAsync.__call__)  # type: ignore[method-assign]
    threading.Thread.start = counting("threads", threading.Thread.start)  # type: ignore[method-assign]
    execute = "_execute_with_wrappers"  # every query, whichever execute* was called
    setattr(CursorWrapper, execute, counting("queries", getattr(CursorWrapper, execute)))
    driver = compiled._execute  # chatstream's compiled statements, on the driver's cursor
    compiled._execute = counting("queries", driver)
    # One send per command or pipeline; the stop subscription's reads are not sends.
    for connection in (AbstractConnection, SyncConnection):
        send = connection.send_packed_command
        connection.send_packed_command = counting("redis", send)  # type: ignore[method-assign]
    return counts


def time_units() -> list[int]:
    """CPU nanoseconds spent in chatstream's database units (``chatstream.dbpool``), from now
    on: the work a reply's set-up and ending do on a thread, where the relay has none."""
    from chatstream import dbpool

    spent = [0]
    unit = dbpool._unit

    def timed(fn: Any, args: tuple[Any, ...]) -> Any:
        began = time.thread_time_ns()
        try:
            return unit(fn, args)
        finally:
            spent[0] += time.thread_time_ns() - began

    dbpool._unit = timed
    return spent


Rounds = dict[str, dict[str, list[float]]]  # relay -> part -> ms per reply, one per round


async def measure(args: argparse.Namespace, owners: list[dict[str, str]]) -> Rounds:
    from project.asgi import django_application as app  # as served: its collector tuned

    chatstream = chatstream_two_requests if args.two_requests else chatstream_reply
    relays = {"chatstream": chatstream, "baseline": baseline_reply}
    relays = {name: relays[name] for name in args.relays.split(",")}
    cpu: Rounds = {name: {"all": [], "loop": [], "units": []} for name in relays}
    used = iter(owners)
    for reply in relays.values():  # warm-up: imports, pools, the SDK client
        for _ in range(5):
            await reply(app, next(used))
    if args.count:
        counts = count_calls()
        for name, reply in relays.items():
            for key in counts:
                counts[key] = 0
            for _ in range(args.replies):
                await reply(app, next(used))
            print(
                f"  {name:10}", ", ".join(f"{k} {v / args.replies:.1f}" for k, v in counts.items())
            )
        return cpu
    units = time_units() if args.parts else [0]
    for _ in range(args.rounds):
        for name, reply in relays.items():
            began, loop, unit = time.process_time(), time.thread_time(), units[0]
            for _ in range(args.replies):
                await reply(app, next(used))
            parts = cpu[name]
            parts["all"].append((time.process_time() - began) / args.replies * 1000)
            parts["loop"].append((time.thread_time() - loop) / args.replies * 1000)  # this thread
            parts["units"].append((units[0] - unit) / args.replies / 1e6)
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replies", type=int, default=100, help="replies per round and relay")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--relays", default="chatstream,baseline", help="which to measure")
    parser.add_argument(
        "--two-requests", action="store_true", help="chatstream's POST, then a GET of the stream"
    )
    parser.add_argument(
        "--count",
        action="store_true",
        help="per reply: thread hops, thread starts, queries, Redis round trips",
    )
    parser.add_argument(
        "--parts",
        action="store_true",
        help="split the CPU: the event loop, chatstream's database units, other threads",
    )
    parser.add_argument("--history", type=int, default=0, help="earlier turns per reply")
    parser.add_argument(
        "--database-url", default="", help="a database to use instead of a new SQLite file"
    )
    parser.add_argument(
        "--redis-url", default="", help="REDIS_URL: the reply log and the cache in Redis"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="chatstream-setup-"))
    upstream = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert upstream.stdout is not None
        port = int(upstream.stdout.readline().split()[1])
        os.environ.update(django_environment(workdir / "db.sqlite3", port))
        if args.database_url:
            os.environ["DATABASE_URL"] = args.database_url
        if args.redis_url:
            os.environ["REDIS_URL"] = args.redis_url
        for command in (["manage.py", "migrate", "-v0"], ["manage.py", "chatstream_seed"]):
            subprocess.run([sys.executable, *command], cwd=ROOT, check=True, capture_output=True)
        count = (5 + args.rounds * args.replies) * 2
        out = workdir / "owners.json"
        subprocess.run([sys.executable, "-m", "bench.prepare", str(count), str(out),
                        str(args.history)], cwd=ROOT, check=True)  # fmt: skip
        import django

        django.setup()
        owners = [{**owner, "turns": args.history} for owner in json.loads(out.read_text())]
        warm_sessions(owners)
        cpu = asyncio.run(measure(args, owners))
    finally:
        upstream.terminate()
        upstream.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    requests = "two requests" if args.two_requests else "one request"
    if args.count:
        return
    print(
        f"CPU per reply set-up ({requests}), {args.history} earlier turns, "
        f"median of {args.rounds} rounds of {args.replies}:"
    )
    for name, parts in cpu.items():
        listed = ", ".join(f"{v:.2f}" for v in parts["all"])
        print(f"  {name:10} {statistics.median(parts['all']):.2f} ms  (rounds: {listed})")
        if args.parts:
            split = zip(parts["all"], parts["loop"], parts["units"], strict=True)
            rest = statistics.median(a - b - c for a, b, c in split)
            loop, units = statistics.median(parts["loop"]), statistics.median(parts["units"])
            print(
                f"  {'':10} event loop {loop:.2f}, database units {units:.2f}, "
                f"other threads {rest:.2f}"
            )
    if len(cpu) == 2:
        ratio = statistics.median(cpu["chatstream"]["all"]) / statistics.median(
            cpu["baseline"]["all"]
        )
        print(f"  ratio      {ratio:.2f}")


if __name__ == "__main__":
    main()
