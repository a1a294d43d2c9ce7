"""`--tracemalloc`: what the servers allocated after the warm-up and still hold at the
end; `--malloc-trim`: their RSS once glibc has handed back the free memory it kept (see
soak_trace/sitecustomize.py, which the servers load). Both say where growing RSS goes.
Memory held at the end is not necessarily a leak (a pool that grew, a cache filling
up); what keeps growing with the run's length is."""

from __future__ import annotations

import os
import re
import signal
import time
import tracemalloc
from pathlib import Path

from keel_bench import out
from soak_procs import Process

FOLDER = Path(__file__).resolve().parent / "soak_trace"
_PREFIX = re.compile(r"^.*/(site-packages|src|lib/python3\.\d+)/")
_NOISE = (tracemalloc.__file__, "<frozen importlib._bootstrap>", "sitecustomize.py")


def traced(processes: list[Process]) -> list[Process]:
    """The processes that trace: Uvicorn's workers and `keel worker`."""
    return [p for p in processes if p.role.startswith(("worker", "jobs worker"))]


def signal_all(processes: list[Process], signum: int = signal.SIGUSR2) -> None:
    """SIGUSR2: start tracing, or write the snapshot; SIGUSR1: `malloc_trim(0)`."""
    for process in traced(processes):
        try:
            os.kill(process.pid, signum)
        except ProcessLookupError:
            continue


def collect(processes: list[Process], folder: Path, wait: float = 120.0) -> dict[int, Path]:
    """Ask for the snapshots and wait for them (blocking)."""
    signal_all(processes)
    expected = {p.pid: folder / f"{p.pid}.snapshot" for p in traced(processes)}
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not all(path.exists() for path in expected.values()):
        time.sleep(0.5)
    return {pid: path for pid, path in expected.items() if path.exists()}


def report_traces(processes: list[Process], snapshots: dict[int, Path]) -> None:
    out("### Memory allocated after the warm-up and still held at the end (tracemalloc)")
    out()
    roles = {p.pid: p.role for p in processes}
    for pid, path in sorted(snapshots.items()):
        snapshot = tracemalloc.Snapshot.load(str(path)).filter_traces(
            [tracemalloc.Filter(inclusive=False, filename_pattern=f"*{n}*") for n in _NOISE]
        )
        total = sum(stat.size for stat in snapshot.statistics("filename"))
        out(f"**{roles.get(pid, pid)}** ({pid}): {total / 2**20:.1f} MiB held, by line:")
        out()
        for stat in snapshot.statistics("lineno")[:8]:
            frame = stat.traceback[0]
            out(
                f"- {stat.size / 1024:.0f} KiB in {stat.count} blocks: "
                f"`{_short(frame.filename)}:{frame.lineno}`"
            )
        out()
        out("The three largest by call stack (where it was allocated ← its callers):")
        out()
        for stat in snapshot.statistics("traceback")[:3]:
            frames = " ← ".join(
                f"{_short(f.filename)}:{f.lineno}" for f in reversed(stat.traceback[-6:])
            )
            out(f"- {stat.size / 1024:.0f} KiB in {stat.count} blocks: `{frames}`")
        out()


def _short(filename: str) -> str:
    """A path from where it becomes telling (the package, or the standard library's)."""
    return _PREFIX.sub("", filename)
