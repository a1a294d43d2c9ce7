"""Bounds on a request's head, on a real `keel serve` (issue 12, point 6).

Tens of MiB of headers were accepted and buffered; a few such requests at once tripled
a worker's memory and stalled everything else. A head larger than
`KEEL_HTTP_MAX_HEADER_BYTES` is now 431, and one still arriving after
`KEEL_HTTP_HEADER_TIMEOUT_SECONDS` is 408, both in the error shape, before the app sees
anything, while other clients are served as usual. Raw sockets: an HTTP client library
would refuse to send such requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures import databases
from tests.support.servers import HOST, Server, clean_env, live_env, serve

pytestmark = pytest.mark.slow

MAX_HEADER_BYTES = 16 * 1024
HEADER_TIMEOUT = 2.0


@contextlib.contextmanager
def _database(workdir: Path) -> Iterator[str]:
    """A database of this module's own: SQLite (`keel serve` migrates it), or one on the
    run's PostgreSQL when it has one, which the production configuration needs (several
    workers cannot share SQLite). Made here: these tests are sync, the run's is async."""
    server_url = os.environ.get(databases.DATABASE_ENV)
    if not server_url:
        yield f"sqlite+aiosqlite:///{workdir / 'keel.db'}"
        return
    url = asyncio.run(databases.create_postgres_database(server_url))
    try:
        env = clean_env(KEEL_DATABASE_URL=url, KEEL_DATA_DIR=str(workdir / "data"))
        command = [sys.executable, "-m", "keel", "db", "upgrade"]
        subprocess.run(command, cwd=workdir, env=env, check=True, capture_output=True)
        yield url
    finally:
        asyncio.run(databases.drop_postgres_database(server_url, url))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("head-limits")
    with _database(workdir) as database_url, _serving(workdir, database_url) as running:
        yield running


@contextlib.contextmanager
def _serving(workdir: Path, database_url: str) -> Iterator[Server]:
    env = live_env(
        workdir / "data",
        database_url,
        KEEL_HTTP_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
        KEEL_HTTP_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
    )
    with serve(workdir, env) as running:
        _wait_until_healthy(running)
        yield running


def _wait_until_healthy(server: Server, budget: float = 20) -> None:
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if server.process.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"keel serve did not become healthy\n{server.output()}")


def exchange(port: int, pieces: list[bytes], *, pause: float = 0.0, timeout: float = 10) -> bytes:
    """Send `pieces` (pausing between them), then read until the server closes."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
                if pause:
                    time.sleep(pause)
        except OSError:
            pass  # the server may stop reading once it has answered
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:
            pass
        return received


def status_and_error(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


def test_headers_past_the_limit_are_431_in_the_error_shape(server: Server) -> None:
    started = time.monotonic()
    answer = exchange(
        server.port,
        [b"GET /health HTTP/1.1\r\nHost: x\r\n"]
        + [b"X-Filler: " + b"a" * 4000 + b"\r\n" for _ in range(2000)]  # ~8 MB
        + [b"\r\n"],
    )
    assert time.monotonic() - started < 5  # refused on arrival, not after reading it all
    status, error = status_and_error(answer)
    assert status == 431
    assert error["code"] == "REQUEST_HEADERS_TOO_LARGE"
    assert error["request_id"]


def test_one_giant_header_is_431(server: Server) -> None:
    answer = exchange(
        server.port,
        [b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (20 << 20) + b"\r\n\r\n"],
    )
    assert status_and_error(answer)[0] == 431


def test_headers_under_the_limit_are_served(server: Server) -> None:
    filler = "c" * (MAX_HEADER_BYTES // 2)
    response = httpx.get(f"{server.url}/health", headers={"X-Filler": filler}, timeout=10)
    assert response.status_code == 200


def test_a_head_sent_too_slowly_is_408(server: Server) -> None:
    started = time.monotonic()
    pieces = [bytes([byte]) for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n"]
    answer = exchange(server.port, pieces, pause=0.2)
    elapsed = time.monotonic() - started
    status, error = status_and_error(answer)
    assert status == 408
    assert error["code"] == "REQUEST_TIMEOUT"
    assert elapsed < HEADER_TIMEOUT + 3


def test_a_connection_that_says_nothing_is_closed(server: Server) -> None:
    started = time.monotonic()
    assert exchange(server.port, []) == b""
    assert time.monotonic() - started < HEADER_TIMEOUT + 3


def test_keep_alive_requests_each_get_the_full_allowance(server: Server) -> None:
    # Two requests of 3/4 of the limit each on one connection: the count starts again.
    filler = "d" * (MAX_HEADER_BYTES * 3 // 4)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(3):
            assert client.get("/health", headers={"X-Filler": filler}).status_code == 200


def test_giant_heads_do_not_stall_other_clients(server: Server) -> None:
    attackers = [
        threading.Thread(
            target=exchange,
            args=(server.port, [b"GET / HTTP/1.1\r\nX: " + b"e" * (30 << 20) + b"\r\n\r\n"]),
        )
        for _ in range(4)
    ]
    for attacker in attackers:
        attacker.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for _ in range(20):
                assert client.get("/health").status_code == 200
    finally:
        for attacker in attackers:
            attacker.join(timeout=30)
