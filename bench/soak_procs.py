"""The server side as /proc and the servers' own outputs show it: RSS and CPU of each
process, Prometheus counters, and the error lines of the logs."""

from __future__ import annotations

import os
import re
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson
from keel_bench import established_on, process_tree, rss_kib, socket_inodes, uvicorn_workers

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


@dataclass(frozen=True)
class Memory:
    """One process's memory (KiB) and connections at one moment."""

    rss: int = 0  # VmRSS = anon + file + shmem
    anon: int = 0
    file: int = 0  # file-backed pages: code, shared libraries, mmapped files
    shmem: int = 0
    postgres: int = 0  # established connections to PostgreSQL's port
    redis: int = 0
    clients: int = 0  # established connections from clients (HTTP and WebSocket)


_FIELDS = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}


def memory_kib(pid: int) -> dict[str, int]:
    found = dict.fromkeys(_FIELDS.values(), 0)
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name = _FIELDS.get(line.split(":", 1)[0] + ":")
            if name is not None:
                found[name] = int(line.split()[1])
    except OSError:
        pass
    return found


def snapshot(
    processes: list[Process], ports: dict[str, int], samples: int = 5, every: float = 1.0
) -> dict[int, Memory]:
    """Each process's memory, the median of `samples` reads `every` seconds apart, and its
    connections (blocking: called while the load is paused). `ports`: postgres, redis,
    and the server's own (clients)."""
    reads: dict[int, list[dict[str, int]]] = {p.pid: [] for p in processes}
    for n in range(samples):
        if n:
            time.sleep(every)
        for process in processes:
            reads[process.pid].append(memory_kib(process.pid))
    sockets = {
        "postgres": established_on(ports["postgres"], remote=True),
        "redis": established_on(ports["redis"], remote=True),
        "clients": established_on(ports["clients"]),
    }
    found = {}
    for pid, values in reads.items():
        mine = socket_inodes(pid) if Path(f"/proc/{pid}").exists() else set()
        found[pid] = Memory(
            **{k: int(statistics.median(v[k] for v in values)) for k in _FIELDS.values()},
            **{k: len(mine & inodes) for k, inodes in sockets.items()},
        )
    return found


class RssSeries:
    """VmRSS of each process every `every` seconds, in a thread, while the load runs
    (Argon2 hashes in flight included: the quiet snapshots are what is judged)."""

    def __init__(self, processes: list[Process], every: float = 5.0) -> None:
        self.processes = processes
        self.every = every
        self.samples: list[tuple[float, dict[int, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="soak-rss", daemon=True)
        self._started = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            at = time.monotonic() - self._started
            self.samples.append((at, {p.pid: rss_kib(p.pid) for p in self.processes}))
            if self._stop.wait(self.every):
                return


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
