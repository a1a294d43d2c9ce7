"""Uploads against a real `keel serve` over real sockets, on both backends: the 413
arrives while the client is still sending (it is cut off early, not read to the end),
and an upload abandoned mid-stream leaves no object, no partial part and no row."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests.files.support import PNG
from tests.fixtures import s3
from tests.support.servers import HOST, Server, live_env, serve, wait_until_healthy

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ADMIN_EMAIL = "files.admin@example.com"
ADMIN_PASSWORD = "a long and uncommon passphrase"
LIMIT = 1024 * 1024
BOUNDARY = "live-upload-boundary"
PREAMBLE = (
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="file"; filename="big.png"\r\n'
    "Content-Type: image/png\r\n\r\n"
).encode()


@contextlib.asynccontextmanager
async def _server(
    tmp_path: Path, migrated_database: str, storage: dict[str, str], limit: int = LIMIT
) -> AsyncIterator[tuple[Server, str]]:
    env = live_env(
        tmp_path,
        migrated_database,
        KEEL_FIRST_ADMIN_EMAIL=ADMIN_EMAIL,
        KEEL_FIRST_ADMIN_PASSWORD=ADMIN_PASSWORD,
        KEEL_MAX_UPLOAD_BYTES=str(limit),
        **storage,
    )
    with serve(tmp_path, env) as server:
        await wait_until_healthy(server)
        async with httpx.AsyncClient(base_url=server.url) as client:
            token = await client.post(
                "/api/v1/auth/token",
                data={
                    "grant_type": "password",
                    "username": ADMIN_EMAIL,
                    "password": ADMIN_PASSWORD,
                },
            )
            assert token.status_code == 200, token.text
            yield server, token.json()["access_token"]


@pytest.fixture
def live_storage(storage_settings: dict[str, object]) -> dict[str, str]:
    """The test's storage settings as the server's environment."""
    env = {f"KEEL_STORAGE_{name.upper()}": str(value) for name, value in storage_settings.items()}
    if storage_settings["backend"] == "s3":
        # S3's smallest part: a multipart upload begins after 5 MiB.
        env |= {"KEEL_STORAGE_S3_PART_BYTES": str(5 * 1024 * 1024), **s3.CREDENTIALS}
    return env


@contextlib.contextmanager
def _connection(port: int) -> Iterator[socket.socket]:
    sock = socket.create_connection((HOST, port), timeout=10)
    # A small send buffer: what the client has "sent" is close to what the server read.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    try:
        yield sock
    finally:
        sock.close()


def _head(token: str, *, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        "POST /api/v1/files HTTP/1.1\r\n"
        f"Host: {HOST}\r\n"
        f"Authorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"{framing}\r\n\r\n"
    ).encode()


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _stream_until_answered(
    sock: socket.socket, first: bytes, chunk: bytes, most: int
) -> tuple[int, bytes]:
    """Send `first`, then `chunk` after `chunk`, until the server answers or `most`
    bytes have gone: (bytes sent, the answer's first bytes)."""
    sock.sendall(first)
    sent = 0
    sock.settimeout(0)
    answer = b""
    pending = memoryview(chunk)
    while sent < most:
        readable, writable, _ = select.select([sock], [sock], [], 5)
        if readable:
            try:
                answer = sock.recv(65536)
            except ConnectionResetError:
                answer = b""
            break
        if writable:
            try:
                count = sock.send(pending)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += count
            pending = pending[count:] if count < len(pending) else memoryview(chunk)
    # The rest of the answer, until the server closes the connection (it says it will).
    sock.settimeout(10)
    with contextlib.suppress(OSError):
        while more := sock.recv(65536):
            answer += more
    return sent, answer


async def _nothing_stored(server: Server, token: str, storage: dict[str, str]) -> None:
    """No row (the list is empty), no object and no leftover part, once the server has
    cleaned up (it may still be finishing when the client is gone)."""
    deadline = time.monotonic() + 15
    async with httpx.AsyncClient(base_url=server.url) as client:
        while True:
            listed = await client.get("/api/v1/files", headers={"Authorization": f"Bearer {token}"})
            assert listed.status_code == 200
            leftovers = _leftovers(storage)
            if not listed.json()["data"] and not leftovers:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"left behind: rows {listed.json()['data']}, storage {leftovers}")
            await anyio.sleep(0.2)


def _leftovers(storage: dict[str, str]) -> list[str]:
    if storage["KEEL_STORAGE_BACKEND"] == "local":
        root = Path(storage["KEEL_STORAGE_LOCAL_PATH"])
        return [str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()]
    endpoint, bucket = storage["KEEL_STORAGE_S3_ENDPOINT_URL"], storage["KEEL_STORAGE_S3_BUCKET"]
    return s3.object_keys(endpoint, bucket) + s3.incomplete_uploads(endpoint, bucket)


async def test_the_413_arrives_long_before_the_body_ends(
    tmp_path: Path, migrated_database: str, live_storage: dict[str, str]
) -> None:
    async with _server(tmp_path, migrated_database, live_storage) as (server, token):
        chunk = _chunked(PNG + bytes(64 * 1024 - len(PNG)))
        far_past = 64 * LIMIT  # what the client would send if nobody stopped it
        with _connection(server.port) as sock:
            first = _head(token, length=None) + _chunked(PREAMBLE)
            sent, answer = await anyio.to_thread.run_sync(
                _stream_until_answered, sock, first, chunk, far_past
            )
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"PAYLOAD_TOO_LARGE" in answer
        # Cut off near the limit: not read to the end, nor anywhere near it.
        assert sent < 8 * LIMIT, sent
        await _nothing_stored(server, token, live_storage)

        # A declared length past the limit is refused before a byte of the body is read.
        with _connection(server.port) as sock:
            head = _head(token, length=far_past)
            sent, answer = await anyio.to_thread.run_sync(
                _stream_until_answered, sock, head, b"x" * 65536, far_past
            )
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert sent < 4 * LIMIT


async def test_an_upload_abandoned_mid_stream_leaves_nothing(
    tmp_path: Path, migrated_database: str, live_storage: dict[str, str]
) -> None:
    # Past one S3 part (5 MiB here), so a multipart upload has begun when the client goes.
    env_limit = 16 * 1024 * 1024
    async with _server(tmp_path, migrated_database, live_storage, limit=env_limit) as (
        server,
        token,
    ):
        body_so_far = PREAMBLE + PNG + bytes(6 * 1024 * 1024)
        with _connection(server.port) as sock:
            sock.sendall(_head(token, length=len(body_so_far) + 4 * 1024 * 1024))
            sock.sendall(body_so_far)
            await anyio.sleep(1.0)  # the server is now writing the object
        # The client is gone without finishing its body.
        await _nothing_stored(server, token, live_storage)
        # The server is fine afterwards: a whole upload works.
        async with httpx.AsyncClient(base_url=server.url) as client:
            whole = await client.post(
                "/api/v1/files",
                files={"file": ("ok.png", PNG, "image/png")},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert whole.status_code == 201, whole.text
            # Leave the shared database as it was found.
            deleted = await client.delete(
                f"/api/v1/files/{whole.json()['id']}", headers={"Authorization": f"Bearer {token}"}
            )
            assert deleted.status_code == 204
