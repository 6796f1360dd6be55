"""The benchmark's processes: the fake upstream, redis-server and the ASGI servers.

Each is started on 127.0.0.1, pinned to a core when there are two, and read
through ``/proc`` (CPU time, RSS, threads) rather than asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
DJANGO_APP = "project.asgi:application"


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
    _worker: int | None = None

    def start(self) -> Server:
        self.port = free_port()
        python = [PYTHON]
        if self.profile is not None:
            python += ["-m", "cProfile", "-o", str(self.profile)]
        if self.kind == "daphne":
            endpoint = f"tcp:port={self.port}:interface=127.0.0.1:backlog=4096"
            command = [*python, "-m", "daphne", "-e", endpoint, self.app]
        elif self.kind == "uvicorn":
            command = [*python, "-m", "uvicorn", self.app, "--host", "127.0.0.1"]
            command += ["--port", str(self.port), "--backlog", "2048"]
            command += ["--lifespan", "off", "--no-access-log"]
        else:  # granian: ASGI without lifespan, as Django speaks it; one worker process
            command = [*python, "-m", "granian", "--interface", "asginl", "--host", "127.0.0.1"]
            command += ["--port", str(self.port), "--workers", "1", "--backlog", "2048"]
            command += ["--http", "1", "--no-access-log", self.app]
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
        """The process that serves: granian's worker, not the supervisor that spawned it."""
        assert self.process is not None
        if self.kind != "granian":
            return self.process.pid
        if self._worker is None:
            self._worker = _only_child(self.process.pid)
        return self._worker

    def rss_kb(self) -> int:
        return proc_rss_kb(self.pid)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


def _only_child(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if len(children) != 1:
        raise RuntimeError(f"expected one worker process under {pid}, found {children}")
    return int(children[0])


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


def raise_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < 4096:
        print(f"warning: only {wanted} open files allowed; 1000 streams need about 3000")


@contextlib.contextmanager
def work_directory(prefix: str, keep: bool) -> Iterator[Path]:
    """A new temporary folder, removed afterwards unless ``keep`` (its logs, for a look)."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield workdir
    finally:
        if keep:
            print(f"Work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def cores() -> tuple[int | None, int | None]:
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2 or not shutil.which("taskset"):
        print("warning: fewer than 2 cores (or no taskset): processes are not pinned")
        return None, None
    return available[0], available[1]
