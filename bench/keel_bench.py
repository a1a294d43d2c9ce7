"""Helpers shared by the benchmarks (`export_memory.py`, `paging.py`, `files.py`,
`realtime.py`, `soak.py`).

Not a benchmark itself: a throwaway PostgreSQL database, the `keel` command, a real
`keel serve` process in its own process group, sign-in, fast bulk loading of items and
RSS sampling from /proc. Everything is started from, and cleaned up by, the benchmark
that imports it; see bench/README.md ("Items benchmarks").

Paths are computed from this file: the repository is its parent's parent, Keel is
`<repo>/.venv/bin/keel`. PostgreSQL is reached as `BENCH_PG_SERVER` (default
`postgresql://postgres@127.0.0.1:5432`, trust auth) with `psql`.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

REPO = Path(__file__).resolve().parent.parent
KEEL = REPO / ".venv" / "bin" / "keel"
OUT_ROOT = REPO / "bench" / "out"
PG_SERVER = os.environ.get("BENCH_PG_SERVER", "postgresql://postgres@127.0.0.1:5432").rstrip("/")
PASSWORD = "bench passphrase 2026"  # noqa: S105 - a throwaway account in a throwaway database
PASSWORD_ENV = "KEEL_BENCH_PASSWORD"  # noqa: S105 - the variable's name
# Every database this module makes or drops starts with this, so a typo cannot drop another.
DB_PREFIX = "keel_bench_"
API = "/api/v1"


def say(*parts: object) -> None:
    """One progress line on stderr (the results go to stdout)."""
    sys.stderr.write("bench: " + " ".join(str(p) for p in parts) + "\n")
    sys.stderr.flush()


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def out_dir(name: str) -> Path:
    """A fresh `bench/out/<name>-<UTC timestamp>/` (ignored by git) for raw figures."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = OUT_ROOT / f"{name}-{stamp}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: str | None = None,
) -> str:
    """Run a fixed tool (psql, keel) and return its stdout; its stderr on failure."""
    done = subprocess.run(  # noqa: S603 - fixed executables, arguments built here
        args, env=env, cwd=cwd, input=stdin, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{Path(args[0]).name} {' '.join(args[1:3])} ... failed ({done.returncode}):\n"
            f"{done.stderr.strip() or done.stdout.strip()}"
        )
    return done.stdout


def _psql_path() -> str:
    found = shutil.which("psql")
    if found is None:
        raise RuntimeError(
            "psql is not installed (Debian/Ubuntu: apt-get install postgresql-client)"
        )
    return found


def psql(database: str, sql: str) -> str:
    """Run SQL (several statements, each in its own transaction) in `database`; -At output."""
    args = [
        _psql_path(),
        "-X",
        "-q",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        f"{PG_SERVER}/{database}",
    ]
    return _run([*args, "-f", "-"], stdin=sql)


class Database:
    """A PostgreSQL database made empty on entry and dropped on exit (even on failure)."""

    def __init__(self, name: str, *, keep: bool = False) -> None:
        if not re.fullmatch(rf"{DB_PREFIX}[a-z0-9_]+", name):
            raise ValueError(f"benchmark databases are named {DB_PREFIX}<a-z0-9_>: {name!r}")
        self.name = name
        self.keep = keep

    @property
    def dsn(self) -> str:
        """The database as libpq and asyncpg name it."""
        return f"{PG_SERVER}/{self.name}"

    @property
    def keel_url(self) -> str:
        return PG_SERVER.replace("postgresql://", "postgresql+asyncpg://", 1) + "/" + self.name

    def __enter__(self) -> Self:
        psql("postgres", f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE);")
        psql("postgres", f"CREATE DATABASE {self.name};")
        say(f"created database {self.name}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.keep:
            say(
                f"kept database {self.name} (--keep-db); drop it with: "
                f"psql {PG_SERVER}/postgres -c 'DROP DATABASE {self.name}'"
            )
            return
        try:
            psql("postgres", f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE);")
            say(f"dropped database {self.name}")
        except RuntimeError as error:
            say(f"could not drop {self.name}: {error}")


def loopback_env(*dropped_prefixes: str) -> dict[str, str]:
    """The caller's environment for a server or client of the benchmark: without the
    variables starting with `dropped_prefixes` (KEEL_*: only the benchmark's settings)
    and without proxies, every address being on loopback."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(dropped_prefixes) and key.lower() not in {"http_proxy", "https_proxy"}
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def keel_env(database: Database, data_dir: Path) -> dict[str, str]:
    """The process environment for `keel`: no KEEL_* of the caller's, only these."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("KEEL_")}
    env.update(
        KEEL_ENV="development",
        KEEL_DATABASE_URL=database.keel_url,
        KEEL_DATA_DIR=str(data_dir),
        KEEL_LOG_FORMAT="json",
    )
    env[PASSWORD_ENV] = PASSWORD
    return env


def keel(env: dict[str, str], *args: str) -> str:
    """Run the `keel` command (from the data folder, so no `.env` of the repo applies)."""
    if not KEEL.exists():
        raise RuntimeError(f"{KEEL.relative_to(REPO)} is missing: run `python3 run.py keel --help`")
    return _run([str(KEEL), *args], env=env, cwd=Path(env["KEEL_DATA_DIR"]))


def create_user(env: dict[str, str], email: str, *, admin: bool = False) -> str:
    """`keel users create`; returns the new user's id."""
    flags = ["--admin"] if admin else []
    printed = keel(env, "users", "create", email, *flags, "--password-env", PASSWORD_ENV)
    found = re.search(r"\(([0-9a-f-]{36})\)", printed)
    if found is None:
        raise RuntimeError(f"no user id in: {printed!r}")
    return found.group(1)


def insert_items(
    database: Database, first: int, last: int, owners: list[str], few_owner: str | None = None
) -> float:
    """Insert items number `first`..`last` (inclusive) in one INSERT ... SELECT; seconds.

    Item i: created_at = updated_at = 2026-01-01 + i seconds (distinct, so the order is
    stable), an id shaped like Keel's UUIDv7 (its 48-bit millisecond prefix is created_at,
    the rest from md5(i): unique), owner owners[i % len(owners)] (but `few_owner`, when
    given, for i % 1000 = 500), title "Item <10 hex>"
    (random order with respect to created_at), status cycling draft/active/archived, tags
    ["a","b"], ["b","c"], ["a"], ["c"], [] in turn (so "a" is on 2 items in 5) but ["rare"]
    on every 1001st (1001 is prime to the owners' cycle, so every owner has some), version 1.
    No text holds a comma, quote or newline, so a CSV line is exactly one row.
    """
    if first > last:
        return 0.0
    owner_array = "ARRAY[" + ", ".join(f"'{owner}'::uuid" for owner in owners) + "]"
    owner = f"({owner_array})[1 + i % {len(owners)}]"
    if few_owner is not None:
        owner = f"CASE WHEN i % 1000 = 500 THEN '{few_owner}'::uuid ELSE {owner} END"
    sql = f"""
SET synchronous_commit = off;
INSERT INTO items (id, owner_id, title, description, status, tags, version, created_at, updated_at)
SELECT
  (lpad(to_hex((extract(epoch FROM ts) * 1000)::bigint), 12, '0') || '7' || substr(h, 1, 3)
     || '8' || substr(h, 4, 15))::uuid,
  {owner},
  'Item ' || substr(h, 20, 10),
  'Benchmark item number ' || i,
  (ARRAY['draft', 'active', 'archived'])[1 + i % 3],
  CASE WHEN i % 1001 = 0 THEN '["rare"]'::jsonb
       WHEN i % 5 = 0 THEN '["a","b"]'::jsonb
       WHEN i % 5 = 1 THEN '["b","c"]'::jsonb
       WHEN i % 5 = 2 THEN '["a"]'::jsonb
       WHEN i % 5 = 3 THEN '["c"]'::jsonb
       ELSE '[]'::jsonb END,
  1, ts, ts
FROM (
  SELECT i, md5(i::text) AS h,
         timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second' AS ts
  FROM generate_series({first}, {last}) AS i
) AS numbered;
VACUUM ANALYZE items;
"""  # noqa: S608 - numbers and ids made here, no outside text
    started = time.perf_counter()
    psql(database.name, sql)
    return time.perf_counter() - started


def count_items(database: Database) -> int:
    return int(psql(database.name, "SELECT count(*) FROM items;").strip())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo.extend(int(child) for child in (task / "children").read_text().split())
            except OSError:
                continue
    return found


def rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB (0 once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def tree_rss_kib(pid: int) -> int:
    return sum(rss_kib(member) for member in process_tree(pid))


def socket_inodes(pid: int) -> set[int]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = str(fd.readlink())
            if target.startswith("socket:["):
                found.add(int(target[8:-1]))
    return found


def established_on(port: int, *, remote: bool = False) -> set[int]:
    """Inodes of the established TCP sockets whose local port (or, with `remote`, whose
    peer's port) is `port`."""
    found = set()
    column = 2 if remote else 1  # rem_address or local_address, as "<hex ip>:<hex port>"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if parts[3] == "01" and int(parts[column].rsplit(":", 1)[1], 16) == port:
                    found.add(int(parts[9]))
    return found


def uvicorn_workers(master: int) -> list[int]:
    """The worker processes of a `keel serve --workers N` (multiprocessing spawn children)."""
    workers = []
    for pid in process_tree(master):
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if pid != master and b"spawn_main" in command:
                workers.append(pid)
    return workers


@contextlib.contextmanager
def redis_prefix(url: str) -> Iterator[str]:
    """A key prefix of our own; its keys are deleted at the end (nothing else is)."""
    import redis  # noqa: PLC0415 - only the benchmarks on Redis need it

    client = redis.Redis.from_url(url)
    client.ping()
    prefix = f"keel-bench-{secrets.token_hex(6)}:"
    try:
        yield prefix
    finally:
        deleted = 0
        try:
            batch = []
            for key in client.scan_iter(match=prefix + "*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += client.delete(*batch)
                    batch = []
            if batch:
                deleted += client.delete(*batch)
            say(f"deleted {deleted} Redis keys under {prefix}")
        except redis.RedisError as error:
            say(f"could not delete the Redis keys under {prefix}: {error}")
        client.close()


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM (the kernel's own peak RSS) of `pid` and its children: Linux >= 4.0,
    `echo 5 > /proc/<pid>/clear_refs`. False when the kernel refuses."""
    try:
        for member in process_tree(pid):
            Path(f"/proc/{member}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def tree_hwm_kib(pid: int) -> int:
    """Summed VmHWM (peak RSS since start or the last reset) of `pid` and its children."""
    total = 0
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


class Server:
    """A server command on a free port, in its own process group, its output in a file.

    Ready once `GET <ready_path>` answers 200; stopped (SIGTERM to the group, SIGKILL after
    15 s) on exit, however the `with` block ends.
    """

    name = "server"
    ready_path = "/health"

    def __init__(
        self, command: list[str], port: int, env: dict[str, str], cwd: Path, log: Path
    ) -> None:
        self.command = command
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.env = env
        self.cwd = cwd
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.process.pid

    def __enter__(self) -> Self:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - fixed command
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                break
            try:
                if httpx.get(self.base_url + self.ready_path, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"{self.name} did not become ready on {self.base_url}:\n{tail}")

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class KeelServer(Server):
    """`keel serve --workers 1` on a free port, in its own process group, log in a file."""

    name = "keel serve"

    def __init__(self, env: dict[str, str], log: Path) -> None:
        port = free_port()
        serve = ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        super().__init__([str(KEEL), *serve], port, env, Path(env["KEEL_DATA_DIR"]), log)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and its children so far (0 for a process gone)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in process_tree(pid):
        try:
            # Fields after the command name's ")": utime and stime (fields 14 and 15 of stat).
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / ticks


def sign_in(client: httpx.Client, email: str) -> str:
    """An access token (15 minutes) for `email`, by the password grant."""
    answer = client.post(
        f"{API}/auth/token",
        data={"grant_type": "password", "username": email, "password": PASSWORD},
    )
    answer.raise_for_status()
    return str(answer.json()["access_token"])


@contextlib.contextmanager
def py_spy(recordings: list[tuple[int, Path]], rate: int = 100) -> Iterator[None]:
    """`py-spy record` of each (pid, output file), raw collapsed stacks, while the block
    runs (attached a second before it starts)."""
    spies = [
        subprocess.Popen(  # noqa: S603 - a fixed command line
            [
                str(REPO / ".venv" / "bin" / "py-spy"),
                *("record", "--pid", str(pid), "--rate", str(rate)),
                *("--format", "raw", "--output", str(output)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for pid, output in recordings
    ]
    time.sleep(1.0)
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        for spy in spies:
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()


@dataclass
class RssSampler:
    """Samples the summed VmRSS of a process and its children every `interval` seconds."""

    pid: int
    interval: float = 0.05
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds, KiB)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: float = 0.0
    max_processes: int = 1

    def __enter__(self) -> Self:
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while True:
            members = process_tree(self.pid)
            self.max_processes = max(self.max_processes, len(members))
            total = sum(rss_kib(member) for member in members)
            self.samples.append((time.perf_counter() - self._started, total))
            if self._stop.wait(self.interval):
                return

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def peak_kib(self) -> int:
        return max((kib for _, kib in self.samples), default=0)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (fraction 0..1) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: list[float]) -> float:
    return statistics.median(values)


def mib(kib: int) -> float:
    return kib / 1024


def machine_line() -> str:
    """Cores, memory, kernel, PostgreSQL and the git commit, for the results header."""
    cores = os.cpu_count()
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        memory = "? GiB"
    kernel = os.uname().release
    try:
        pg = psql("postgres", "SHOW server_version;").strip()
    except RuntimeError:
        pg = "?"
    commit = "unknown"
    git = shutil.which("git")
    if git is not None:
        try:
            commit = _run([git, "-C", str(REPO), "rev-parse", "--short", "HEAD"]).strip()
            dirty = subprocess.run(  # noqa: S603 - fixed command
                [git, "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "src"], check=False
            ).returncode
            if dirty:
                commit += " (src modified)"
        except RuntimeError:
            pass
    python = ".".join(str(part) for part in sys.version_info[:3])
    return (
        f"{cores} cores, {memory}, Linux {kernel}, PostgreSQL {pg}, Python {python}, "
        f"commit {commit}"
    )
