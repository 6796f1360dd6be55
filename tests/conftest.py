from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
import redis

from tests.fake_openai import FakeOpenAI
from tests.sse_client import ApiClient

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_cached_prices() -> None:
    """A test database's flush sends no signal: each test reads the price table afresh."""
    from chatstream.pricing import forget_prices  # noqa: PLC0415 (after Django's set-up)

    forget_prices()


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    yield server
    server.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    """A real ASGI server process (daphne or uvicorn) running the demo project."""

    kind: str
    workdir: Path
    env: dict[str, str]
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log: Any = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def events_file(self) -> Path:
        return Path(self.env["TEST_EVENTS_FILE"])

    def finished_events(self) -> list[dict[str, str]]:
        if not self.events_file.exists():
            return []
        return [json.loads(line) for line in self.events_file.read_text().splitlines()]

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def start(self) -> LiveServer:
        self.port = self.port or free_port()  # a restart keeps its address
        app = "project.asgi:application"
        if self.kind == "daphne":
            command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), app]
        else:
            command = [
                sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1",
                "--port", str(self.port), "--lifespan", "off", "--no-access-log",
            ]  # fmt: skip
        if self.log is not None:
            self.log.close()
        self.log = open(self.workdir / f"{self.kind}.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.read_log()
            try:
                if httpx2.get(self.url + "/api/assistants/", timeout=1).status_code < 500:
                    return self
            except httpx2.HTTPError:
                time.sleep(0.1)
        raise TimeoutError(f"{self.kind} did not start:\n{self.read_log()}")

    def read_log(self) -> str:
        return (self.workdir / f"{self.kind}.log").read_text(errors="replace")

    def signal(self, signum: int, timeout: float = 20) -> int:
        assert self.process is not None
        self.process.send_signal(signum)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log is not None:
            self.log.close()
            self.log = None

    def client(self) -> ApiClient:
        return ApiClient(self.url)


def make_live_server(
    kind: str, workdir: Path, fake: FakeOpenAI, *, migrate: bool = True, **extra_env: str
) -> LiveServer:
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "AZURE", "REDIS"))},
        "DJANGO_SETTINGS_MODULE": "tests.live_settings",
        "DJANGO_SECRET_KEY": "live-tests-secret-key",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_SECURE_COOKIES": "0",
        "DJANGO_SECURE_SSL_REDIRECT": "0",
        "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
        "OPENAI_API_KEY": "sk-test-secret-0123456789",
        "OPENAI_BASE_URL": fake.base_url,
        "CHATSTREAM_MODEL": "fake-model",
        "CHATSTREAM_ALLOW_ANONYMOUS": "1",
        "TEST_EVENTS_FILE": str(workdir / "events.jsonl"),
        "PYTHONUNBUFFERED": "1",
        **extra_env,
    }
    server = LiveServer(kind=kind, workdir=workdir, env=env)
    if migrate:
        server.manage("migrate", "-v0")
        server.manage("chatstream_seed")
    return server.start()


def make_worker_pair(
    workdir: Path, fake: FakeOpenAI, redis_url: str, database_url: str, **extra_env: str
) -> tuple[LiveServer, LiveServer]:
    """Two daphne processes sharing one Redis and one database, as two workers do."""
    common = {"REDIS_URL": redis_url, "DATABASE_URL": database_url, **extra_env}
    a = make_live_server("daphne", workdir / "a", fake, **common)
    try:
        b = make_live_server("daphne", workdir / "b", fake, migrate=False, **common)
    except BaseException:
        a.stop()
        raise
    return a, b


@pytest.fixture(scope="session", params=["daphne", "uvicorn"])
def asgi_server(
    request: pytest.FixtureRequest,
    fake_openai: FakeOpenAI,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveServer]:
    server = make_live_server(request.param, tmp_path_factory.mktemp(request.param), fake_openai)
    yield server
    server.stop()


@pytest.fixture
def fresh_server(fake_openai: FakeOpenAI, tmp_path: Path) -> Iterator[Any]:
    """Builds daphne servers of its own, for tests that kill or signal them."""
    servers: list[LiveServer] = []

    def build(**extra_env: str) -> LiveServer:
        server = make_live_server("daphne", tmp_path / f"s{len(servers)}", fake_openai, **extra_env)
        servers.append(server)
        return server

    yield build
    for server in servers:
        server.stop()


# --- Redis and PostgreSQL: the machine's own when they answer, else our own ----------


@dataclass
class RedisServer:
    """A redis-server process of our own, on a free port, that a test may restart."""

    workdir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.port = self.port or free_port()
        self.process = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if redis_answers(self.url):
                return self
            time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The machine's Redis on 6379 when it answers, else a redis-server of our own."""
    system = "redis://127.0.0.1:6379/0"
    if redis_answers(system):
        yield system
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


POSTGRES = "postgresql://postgres@127.0.0.1:5432"  # the machine's, trust auth


@contextlib.contextmanager
def new_postgres_database(name: str) -> Iterator[str | None]:
    """A new database on the machine's PostgreSQL, dropped after; ``None`` if it is absent."""
    admin = f"{POSTGRES}/test"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=2) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
            connection.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError:
        url = None
    else:
        url = f"{POSTGRES}/{name}"
    try:
        yield url
    finally:
        if url is not None:
            with psycopg.connect(admin, autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def shared_database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database for several server processes: PostgreSQL when it answers, else SQLite."""
    with new_postgres_database(f"chatstream_live_{os.getpid()}") as url:
        yield url or f"sqlite:///{tmp_path_factory.mktemp('shared') / 'db.sqlite3'}"
