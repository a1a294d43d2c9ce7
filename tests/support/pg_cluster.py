"""A PostgreSQL cluster of a test's own, on a free port, made with the Debian binaries.

Reliability tests stop, shut down, kill and freeze their database; they never do that to
the machine's shared server. `initdb` refuses to run as root, so when the tests run as
root the cluster is made and run as the `postgres` user, in a folder that user owns.

    with PgCluster.create(tmp_path) as cluster:
        url = cluster.url("keel")      # postgresql+asyncpg://postgres@127.0.0.1:<port>/keel
        cluster.stop("fast"); cluster.start()
        cluster.freeze(); cluster.thaw()   # SIGSTOP / SIGCONT the postmaster and backends
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from tests.support.servers import HOST, free_port

START_SECONDS = 30.0
ShutdownMode = Literal["smart", "fast", "immediate"]


def _bin_dir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        pytest.fail("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    return found[-1].parent  # the newest major version installed


def _as_owner() -> list[str]:
    """The prefix that runs a command as the cluster's owner: `postgres` when we are root."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class PgCluster:
    folder: Path
    port: int
    bin_dir: Path

    @classmethod
    @contextlib.contextmanager
    def create(cls) -> Iterator[PgCluster]:
        """initdb into a fresh folder, start, yield; always stopped and removed."""
        bin_dir = _bin_dir()
        folder = Path(tempfile.mkdtemp(prefix="keel-pg-"))
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(folder, owner.pw_uid, owner.pw_gid)
        cluster = cls(folder, free_port(), bin_dir)
        try:
            cluster._run(
                "initdb",
                "-D",
                str(cluster.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            )
            with (cluster.data / "postgresql.conf").open("a") as conf:
                conf.write(
                    f"port = {cluster.port}\n"
                    f"listen_addresses = '{HOST}'\n"
                    f"unix_socket_directories = '{folder}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "max_connections = 100\nshared_buffers = 32MB\n"
                    "log_min_messages = warning\n"
                )
            cluster.start()
            yield cluster
        finally:
            with contextlib.suppress(Exception):
                cluster.thaw()
            with contextlib.suppress(Exception):
                cluster.stop("immediate")
            shutil.rmtree(folder, ignore_errors=True)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log_file(self) -> Path:
        return self.folder / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@{HOST}:{self.port}/{database}"

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*_as_owner(), str(self.bin_dir / tool), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def start(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log_file), "-w", "-t", "30", "start"
        )

    def stop(self, mode: ShutdownMode = "fast", *, wait: bool = True) -> None:
        """`pg_ctl stop -m mode`; with wait=False it returns at once (a smart shutdown
        waits for every client to leave, which is what a test may want to watch)."""
        args = ["-D", str(self.data), "-m", mode, "stop"]
        if wait:
            self._run("pg_ctl", "-w", "-t", "30", *args)
        else:
            self._run("pg_ctl", "-W", *args)

    def is_running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = self._run(
            "psql",
            "-h",
            HOST,
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            sql,
        )
        return done.stdout.strip()

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def _pids(self) -> list[int]:
        """The postmaster and every process it started (backends, checkpointer...)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(
            ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
        ).stdout.split()
        return [postmaster, *(int(pid) for pid in children)]

    def freeze(self) -> None:
        """SIGSTOP the whole server: connections stay open, nothing answers (a hung host)."""
        for pid in self._pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def wait_until(predicate: object, timeout: float, what: str) -> None:
    """Poll `predicate()` (a callable) until it is true, or fail saying `what`."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.05)
