"""Real `keel serve` processes for tests: start on a free port, wait, always stop.

With KEEL_TEST_SERVER_CONFIG=production every server runs in the production server
configuration of deploy/ (tests/support/production.py), with a `keel worker` beside it.

The servers run in the test's temporary folder, not in the repository: the settings read
`.env` from the working directory, and a developer's `.env` must not leak into a test (the
repository root is put on PYTHONPATH so `tests.support` modules import).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from keel.core.metrics import MULTIPROC_ENV
from tests.support import production

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
STARTUP_SECONDS = 20.0

# --- processes -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any KEEL_* or metrics folder, plus `settings`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("KEEL_") and name.upper() != MULTIPROC_ENV
    }
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"  # every line is in the files, however the process ends
    env.update(settings)
    return env


def live_env(data_dir: Path, database_url: str, **settings: str) -> dict[str, str]:
    """`clean_env` for a test server: its own data folder, the test database, cheap
    password hashes (the parameters are settings; production's are tested elsewhere)."""
    return clean_env(
        KEEL_DATA_DIR=str(data_dir),
        KEEL_DATABASE_URL=database_url,
        KEEL_AUTH_ARGON2_MEMORY_KIB="1024",
        KEEL_AUTH_ARGON2_TIME_COST="1",
        **settings,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the server if it still runs, then kill anything left in its process group."""
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    stdout: Path
    stderr: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def metrics_headers(self) -> dict[str, str]:
        """What GET /metrics needs on this server (the token, when one is set)."""
        return production.metrics_headers(self.env)

    def serving_pids(self) -> list[int]:
        """The processes that serve requests: the worker processes of a supervisor with
        several, else the server process itself (Linux: /proc)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = [int(pid) for pid in children.read_text().split()]
        return pids or [self.process.pid]

    def output(self) -> str:
        return (
            f"--- stdout ---\n{self.stdout.read_text(errors='replace')}\n"
            f"--- stderr ---\n{self.stderr.read_text(errors='replace')}"
        )

    def log_events(self) -> list[str]:
        """The `event` of each JSON log line (KEEL_LOG_FORMAT=json), in order."""
        events: list[str] = []
        for line in self.stdout.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and isinstance(record.get("event"), str):
                    events.append(record["event"])
        return events


def _start(workdir: Path, env: dict[str, str], args: list[str]) -> Server:
    port = free_port()
    stdout = workdir / f"keel-{port}.out"
    stderr = workdir / f"keel-{port}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "keel", "serve", "--host", HOST, "--port", str(port), *args],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group, so no worker outlives the test
        )
    return Server(process, port, stdout, stderr, env)


@contextlib.contextmanager
def serve(
    workdir: Path, env: dict[str, str], *args: str, as_given: bool = False
) -> Iterator[Server]:
    """`keel serve` with `env` and `args`; in the production configuration when the run
    asks for it (KEEL_TEST_SERVER_CONFIG), unless `as_given`: for the tests of one
    configuration itself (the embedded default, the refusals)."""
    if as_given or not production.requested():
        server = _start(workdir, env, list(args))
        try:
            yield server
        finally:
            stop(server.process)
        return
    with production.configured(workdir, env) as production_env:
        server = _start(workdir, production_env, list(args))
        worker = (
            _start_worker(workdir, production_env)
            if production.jobs_on_redis(production_env)
            else None
        )
        try:
            yield server
        finally:
            stop(server.process)
            if worker is not None:
                stop(worker.process)


def _start_worker(workdir: Path, env: dict[str, str]) -> Server:
    """A `keel worker` beside a production-configured server (as compose runs one)."""
    worker_env = {**env, "KEEL_JOBS_WORKER_METRICS_PORT": "0"}
    stdout = workdir / f"worker-{time.monotonic_ns()}.out"
    stderr = stdout.with_suffix(".err")
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "keel", "worker"],
            cwd=workdir,
            env=worker_env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    return Server(process, 0, stdout, stderr, worker_env)


def run_to_exit(workdir: Path, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Run `keel serve` that is expected to refuse to start: (exit code, stdout, stderr).
    Always as given: what is refused is the test's configuration, not production's."""
    with serve(workdir, env, *args, as_given=True) as server:
        try:
            code = server.process.wait(timeout=STARTUP_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"keel serve did not exit by itself:\n{server.output()}")
        return (
            code,
            server.stdout.read_text(errors="replace"),
            server.stderr.read_text(errors="replace"),
        )


async def wait_for_exit(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while (code := process.poll()) is None and time.monotonic() < deadline:
        await anyio.sleep(0.02)
    return code


def connection_refused(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


async def wait_until_refused(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not connection_refused(port):
        if time.monotonic() > deadline:
            pytest.fail(f"port {port} still accepts connections {timeout} s after SIGTERM")
        await anyio.sleep(0.02)


# --- HTTP ----------------------------------------------------------------------------


async def wait_until_healthy(server: Server, startup_seconds: float = STARTUP_SECONDS) -> int:
    """Poll /health until it answers; return how many probes the server answered.

    A refused connection never reached the server. A probe that connected waits for its
    answer (a multi-worker server binds before its workers start), so every request the
    server saw is counted here, or the test fails: never a guess. `startup_seconds` is
    longer for several workers, which import the app each (slowly under coverage).
    """
    deadline = time.monotonic() + startup_seconds
    timeout = httpx.Timeout(startup_seconds, connect=2.0)
    async with httpx.AsyncClient(timeout=timeout) as client:
        while True:
            code = server.process.poll()
            if code is not None:
                pytest.fail(f"keel serve exited with {code} before /health:\n{server.output()}")
            try:
                response = await client.get(f"{server.url}/health")
            except httpx.ConnectError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"/health did not answer in {startup_seconds} s:\n{server.output()}"
                    )
                await anyio.sleep(0.05)
                continue
            assert response.status_code == 200, response.text
            return 1


def request_counts_by_worker(
    metrics_dir: Path, scratch: Path, labels: dict[str, str]
) -> dict[int, float]:
    """keel_http_requests_total{labels} in each worker's own counter file (counter_<pid>.db):
    which worker processes served those requests, and how many each."""
    counts: dict[int, float] = {}
    for path in sorted(metrics_dir.glob("counter_*.db")):
        pid = int(path.stem.removeprefix("counter_"))
        single = scratch / str(pid)
        single.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, single / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(single))  # type: ignore[no-untyped-call]
        counts[pid] = registry.get_sample_value("keel_http_requests_total", labels) or 0.0
    return counts


# --- workers -------------------------------------------------------------------------


@contextlib.contextmanager
def work(workdir: Path, env: dict[str, str], *args: str) -> Iterator[Server]:
    """A real `keel worker` process (its `port` is its metrics port, when set in env)."""
    port = int(env.get("KEEL_JOBS_WORKER_METRICS_PORT", "0"))
    stdout = workdir / f"worker-{os.getpid()}-{time.monotonic_ns()}.out"
    stderr = stdout.with_suffix(".err")
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "keel", "worker", *args],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    worker = Server(process, port, stdout, stderr)
    try:
        yield worker
    finally:
        stop(process)
        # Shown by pytest with the test's output when the test fails.
        print(worker.output())  # noqa: T201


def ws_connections_by_worker(metrics_dir: Path, scratch: Path) -> dict[int, float]:
    """keel_ws_connections in each worker's own gauge file: which worker holds how many
    open WebSocket connections."""
    counts: dict[int, float] = {}
    for path in sorted(metrics_dir.glob("gauge_livesum_*.db")):
        pid = int(path.stem.removeprefix("gauge_livesum_"))
        single = scratch / f"ws-{pid}"
        single.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, single / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(single))  # type: ignore[no-untyped-call]
        counts[pid] = registry.get_sample_value("keel_ws_connections") or 0.0
    return counts
