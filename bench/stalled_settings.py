"""Settings for ``bench/stalled_memory.py``'s server: the benchmark's, plus three signals.

``SIGUSR1`` writes a dump to ``STALLED_DUMP_DIR``: what the allocators hold
(``malloc_info`` totals, pymalloc's allocated blocks), the bytes waiting in the
server's transports, the threads, and with ``PYTHONTRACEMALLOC`` set, the traced
memory compared with the first dump, by traceback. ``SIGUSR2`` writes a whole
tracemalloc snapshot there (``bench/idle_profile.py``). ``SIGWINCH`` calls
``malloc_trim(0)``: what glibc then gives back was free memory, not live objects.
Nothing here lives in chatstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import os
import re
import signal
import sys
import threading
import tracemalloc
from pathlib import Path
from typing import Any

from bench.settings import *  # noqa: F403

_libc = ctypes.CDLL("libc.so.6")
_libc.fopen.restype = ctypes.c_void_p
_libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
_libc.fclose.argtypes = [ctypes.c_void_p]
_libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
_base: list[tracemalloc.Snapshot] = []


def _glibc(path: Path) -> dict[str, int]:
    """glibc's totals over every arena: bytes taken from the system, and free in them."""
    stream = _libc.fopen(str(path).encode(), b"w")
    _libc.malloc_info(0, stream)
    _libc.fclose(stream)
    totals = path.read_text().rsplit("</heap>", 1)[-1]
    size = {
        k: int(v) for k, v in re.findall(r'<total type="(\w+)" count="\d+" size="(\d+)"', totals)
    }
    system = int(re.search(r'<system type="current" size="(\d+)"', totals).group(1))  # type: ignore[union-attr]
    arenas = len(re.findall(r"<heap nr=", path.read_text()))
    free = size.get("fast", 0) + size.get("rest", 0)
    return {
        "system": system + size.get("mmap", 0),
        "in_use": system - free + size.get("mmap", 0),
        "arenas": arenas,
    }


def _pymalloc(path: Path) -> dict[str, int]:
    """pymalloc's allocated blocks and arenas (``sys._debugmallocstats``, which writes to fd 2).

    Empty under tracemalloc, whose hooks wrap pymalloc: ``traced`` says it then.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as file:
        os.dup2(file.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    text = path.read_text()
    used = re.search(r"bytes in allocated blocks\s+=\s+([\d,]+)", text)
    arenas = re.search(r"arenas allocated current\s+=\s+([\d,]+)", text)
    if used is None or arenas is None:
        return {}
    return {"used": int(used[1].replace(",", "")), "arenas": int(arenas[1].replace(",", ""))}


def _write_buffers() -> dict[str, list[int]]:
    """[transports, bytes] waiting to be sent, in asyncio's transports and Twisted's."""
    found = {"asyncio": [0, 0], "twisted": [0, 0]}
    abstract = sys.modules.get("twisted.internet.abstract")  # only where daphne loaded it
    FileDescriptor = abstract.FileDescriptor if abstract else ()  # noqa: N806
    # type(), not isinstance(): isinstance() asks a lazy object for its __class__ and so
    # evaluates it (translations, settings): tens of megabytes.
    for thing in gc.get_objects():
        kind = type(thing)
        if issubclass(kind, asyncio.WriteTransport) and kind.__module__.startswith("asyncio"):
            with contextlib.suppress(Exception):
                found["asyncio"][1] += thing.get_write_buffer_size()
                found["asyncio"][0] += 1
        elif FileDescriptor and issubclass(kind, FileDescriptor):
            found["twisted"][0] += 1
            found["twisted"][1] += len(thing.dataBuffer) - thing.offset + thing._tempDataLen
    return found


def _traced(out: dict[str, Any]) -> None:
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    # Not get_traced_memory(): it counts the first snapshot, kept here to compare with.
    out["traced"] = sum(stat.size for stat in snapshot.statistics("filename"))
    if not _base:
        _base.append(snapshot)
        return
    out["traced_diff"] = [
        {
            "size": stat.size_diff,
            "count": stat.count_diff,
            "traceback": [
                f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in stat.traceback
            ][-8:],
        }
        for stat in snapshot.compare_to(_base[0], "traceback")[:25]
    ]


def _dump(signum: int, frame: Any) -> None:
    folder = Path(os.environ["STALLED_DUMP_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    number = len(list(folder.glob("*.json"))) + 1
    # The most traced at once since the last dump ended, read before this one allocates:
    # a burst's peak of Python objects, which the allocators then keep.
    peak = tracemalloc.get_traced_memory()[1]
    gc.collect()
    out: dict[str, Any] = {"threads": threading.active_count(), "write_buffers": _write_buffers()}
    if tracemalloc.is_tracing():
        out["traced_peak"] = peak
        _traced(out)
        tracemalloc.reset_peak()
        out["traced_after"] = tracemalloc.get_traced_memory()[0]
    out["glibc"] = _glibc(folder / f"{number}.malloc.xml")
    out["pymalloc"] = _pymalloc(folder / f"{number}.pymalloc.txt")
    (folder / f"{number}.part").write_text(json.dumps(out))
    (folder / f"{number}.part").rename(folder / f"{number}.json")


def _snapshot(signum: int, frame: Any) -> None:
    """The whole traced memory, for ``bench/idle_profile.py`` to compare."""
    folder = Path(os.environ["STALLED_DUMP_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    number = len(list(folder.glob("*.snapshot"))) + 1
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    snapshot.dump(str(folder / f"{number}.part"))
    (folder / f"{number}.part").rename(folder / f"{number}.snapshot")


signal.signal(signal.SIGUSR1, _dump)
signal.signal(signal.SIGUSR2, _snapshot)
signal.signal(signal.SIGWINCH, lambda signum, frame: _libc.malloc_trim(0))
