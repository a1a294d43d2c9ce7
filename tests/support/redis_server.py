"""A `redis-server` of a test's own, on a free port (never the machine's shared Redis).

with running_redis(port) as process:   # started, answering; killed at the end
    ...
with OwnRedis.started() as redis:       # stop(), start() again, freeze(), thaw()
    redis.url
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.support.servers import HOST, free_port

START_SECONDS = 10.0


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), 0.5) as sock:
            sock.settimeout(0.5)
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _start(port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + START_SECONDS
    while not _answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    return process


def _kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGCONT)  # a frozen process must be able to die
    process.kill()
    process.wait()


@contextlib.contextmanager
def running_redis(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A Redis keeping nothing on disk, on `port`, until the block ends."""
    process = _start(port)
    try:
        yield process
    finally:
        _kill(process)


@dataclass
class OwnRedis:
    port: int
    process: subprocess.Popen[bytes] | None = field(default=None)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @classmethod
    @contextlib.contextmanager
    def started(cls) -> Iterator[OwnRedis]:
        redis = cls(free_port())
        redis.start()
        try:
            yield redis
        finally:
            redis.stop()

    def start(self) -> None:
        if self.process is None:
            self.process = _start(self.port)

    def stop(self) -> None:
        """Killed: connections drop, new ones are refused (its data is gone)."""
        if self.process is not None:
            _kill(self.process)
            self.process = None

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and new ones are accepted by the kernel, but
        nothing answers (a hung Redis)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
