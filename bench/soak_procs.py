"""The server side as /proc and the servers' own outputs show it: RSS and CPU of each
process, Prometheus counters, and the error lines of the logs."""

from __future__ import annotations

import os
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson
from keel_bench import process_tree, rss_kib, uvicorn_workers

_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Process:
    pid: int
    role: str  # "master", "worker 1", "worker 2", "jobs worker", or another helper


def server_processes(serve: int, jobs: int) -> list[Process]:
    """Every process of `keel serve` (its master, the Uvicorn workers, any helper such as
    multiprocessing's resource tracker) and of `keel worker`."""
    workers = sorted(uvicorn_workers(serve))
    found = [Process(serve, "master")]
    found += [Process(pid, f"worker {n}") for n, pid in enumerate(workers, 1)]
    for pid in process_tree(serve):
        if pid != serve and pid not in workers:
            found.append(Process(pid, f"helper {_name(pid)}"))
    found += [
        Process(pid, "jobs worker" if pid == jobs else f"jobs helper {_name(pid)}")
        for pid in process_tree(jobs)
    ]
    return found


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def rss_snapshot(processes: list[Process], samples: int = 5, every: float = 1.0) -> dict[int, int]:
    """VmRSS of each process in KiB: the median of `samples` reads `every` seconds apart
    (blocking: called while the load is paused)."""
    reads: dict[int, list[int]] = {p.pid: [] for p in processes}
    for n in range(samples):
        if n:
            time.sleep(every)
        for process in processes:
            reads[process.pid].append(rss_kib(process.pid))
    return {pid: int(statistics.median(values)) for pid, values in reads.items()}


def own_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of this one process (not its children); None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_since(before: dict[int, float]) -> dict[int, float]:
    """CPU seconds each process used since `before` was read (processes gone: left out)."""
    used = {pid: own_cpu_seconds(pid) for pid in before}
    return {pid: now - before[pid] for pid, now in used.items() if now is not None}


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text: name -> [(labels, value)]."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match["labels"] or ""))
        found.setdefault(match["name"], []).append((labels, float(match["value"])))
    return found


def metric_sum(
    metrics: dict[str, list[tuple[dict[str, str], float]]], name: str, **match: str
) -> float:
    return sum(
        value
        for labels, value in metrics.get(name, [])
        if all(labels.get(k) == v for k, v in match.items())
    )


def by_label(
    metrics: dict[str, list[tuple[dict[str, str], float]]], name: str, *keys: str
) -> Counter[str]:
    counts: Counter[str] = Counter()
    for labels, value in metrics.get(name, []):
        counts[" ".join(labels.get(k, "?") for k in keys)] += int(value)
    return counts


def worker_deaths(log: Path, start: int = 0, end: int | None = None) -> list[str]:
    """Uvicorn's lines for a worker it found dead (or not answering its health check
    within 5 s, which it kills) and replaced, between byte offsets `start` and `end`."""
    with log.open("rb") as file:
        file.seek(start)
        text = file.read(None if end is None else max(0, end - start)).decode(errors="replace")
    return [
        line[:300]
        for line in text.splitlines()
        if "Child process [" in line and ("died" in line or "failed" in line)
    ]


def started_workers(log: Path) -> tuple[set[int], int]:
    """The pids of Uvicorn's "Started server process [pid]" lines, and how many
    "Application startup complete." lines there are."""
    text = log.read_text(errors="replace")
    pids = {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", text)}
    return pids, text.count("Application startup complete.")


def error_lines(log: Path, start: int = 0) -> list[str]:
    """Lines of a server's output from byte `start` that report an error: JSON lines at
    level error or critical, and any line of a traceback printed outside the log."""
    found = []
    with log.open("rb") as file:
        file.seek(start)
        for raw in file:
            line = raw.decode(errors="replace").rstrip()
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                if "Traceback" in line or "Error" in line:
                    found.append(line[:400])
                continue
            if isinstance(record, dict) and record.get("level") in {"error", "critical"}:
                found.append(line[:400])
    return found
