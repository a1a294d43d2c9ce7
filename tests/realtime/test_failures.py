"""Realtime when things go wrong: Redis lost and back, a client that stops reading, the
server shutting down, credentials that expire unrenewed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.realtime.support import (
    connected,
    receive,
    running,
    send,
    subscribe,
    token,
)
from tests.support.redis_server import running_redis
from tests.support.servers import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def _close_code(ws: ClientConnection, within: float = 10) -> int:
    async def drain() -> None:
        while True:
            await ws.recv()

    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(drain(), within)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def _error_code(ws: ClientConnection) -> str:
    answer = await receive(ws, timeout=10)
    assert answer["type"] == "error", answer
    return str(answer["code"])


async def test_losing_redis_keeps_connections_and_delivery_resumes(
    requires_redis: str, migrated_database: str, tmp_path: Path
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with running_redis(port) as redis_process:
        async with running(tmp_path, migrated_database, KEEL_REDIS_URL=url) as live:
            _user_id, access = await live.user()
            async with connected(live.ws_url, access) as ws:
                await subscribe(ws, "room:outage")
                await send(ws, {"type": "publish", "channel": "room:outage", "data": "before"})
                assert (await receive(ws))["data"] == "before"

                redis_process.kill()
                redis_process.wait()
                await send(ws, {"type": "publish", "channel": "room:outage", "data": "lost"})
                assert await _error_code(ws) == "SERVICE_UNAVAILABLE"
                await send(ws, {"type": "subscribe", "channel": "room:other"})
                assert await _error_code(ws) == "SERVICE_UNAVAILABLE"
                await send(ws, {"type": "ping"})
                assert await receive(ws) == {"type": "pong"}  # the connection stays
                ready = await live.admin.get("/ready")
                assert ready.status_code == 503
                assert ready.json()["checks"]["redis"] != "ok"

                with running_redis(port):
                    deadline = time.monotonic() + 15
                    while True:
                        await send(
                            ws, {"type": "publish", "channel": "room:outage", "data": "after"}
                        )
                        answer = await receive(ws, timeout=10)
                        if answer["type"] == "message":
                            break
                        assert answer["code"] == "SERVICE_UNAVAILABLE"
                        assert time.monotonic() < deadline, "publishing never came back"
                        await asyncio.sleep(0.5)
                    assert answer["data"] == "after"
                    assert (await live.admin.get("/ready")).status_code == 200


def _masked_text(text: str) -> bytes:
    """A client's text frame (RFC 6455 §5.2: clients mask what they send)."""
    payload = text.encode()
    mask = os.urandom(4)
    head = bytes([0x81])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    else:
        head += bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    return head + mask + bytes(byte ^ mask[n % 4] for n, byte in enumerate(payload))


def _stuck_client(port: int, access: str, channel: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /api/v1/realtime HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {access}\r\n\r\n"
        ).encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)  # the handshake's answer, and not a byte more
    assert answer.startswith(b"HTTP/1.1 101"), answer
    sock.sendall(_masked_text(json.dumps({"type": "subscribe", "channel": channel})))
    time.sleep(0.3)  # subscribed before the flood begins
    return sock


def _close_code_of_stuck(sock: socket.socket) -> int:
    """Read everything the server sent the stuck client; the close frame's code."""
    sock.settimeout(10)
    data = b""
    with contextlib.suppress(ConnectionError, TimeoutError):
        while chunk := sock.recv(1 << 20):
            data += chunk
    sock.close()
    # Walk the frames: 2-byte header, 16/64-bit extended lengths, no mask from servers.
    at, code = 0, 0
    while at + 2 <= len(data):
        opcode, length = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if length == 126:
            length, at = int.from_bytes(data[at : at + 2], "big"), at + 2
        elif length == 127:
            length, at = int.from_bytes(data[at : at + 8], "big"), at + 8
        if opcode == 0x8:
            code = int.from_bytes(data[at : at + 2], "big")
        at += length
    return code


def _rss_kib(pids: list[int]) -> int:
    """The resident memory of these processes, added up (KiB)."""
    total = 0
    for pid in pids:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        [rss] = [line for line in lines if line.startswith("VmRSS:")]
        total += int(rss.split()[1])
    return total


async def test_a_client_that_stops_reading_is_closed_1013_and_its_memory_released(
    migrated_database: str, tmp_path: Path
) -> None:
    async with running(
        tmp_path,
        migrated_database,
        KEEL_REALTIME_OUTBOX_FRAMES="64",
        # What the channel keeps for resuming is memory too (up to 10,000 frames by
        # default): kept small here, so that what is measured is the slow client's share.
        KEEL_REALTIME_HISTORY_FRAMES="100",
        KEEL_REALTIME_PUBLISH_BURST="100000",
        KEEL_REALTIME_PUBLISH_PER_SECOND="100000",
    ) as live:
        _slow_id, slow = await live.user()
        _fast_id, fast = await live.user()
        # Every worker's, when the server has several (the production configuration).
        pids = live.server.serving_pids()
        payload = "x" * 15_000
        # A client that stops reading: a raw socket that does the handshake, sends its
        # auth and subscribe frames, then never reads again; it buffers little, so the
        # server's sends block almost at once, as with a client that is stuck.
        async with connected(live.ws_url, fast) as publisher:
            await subscribe(publisher, "room:flood")

            async def drain_own_copies() -> None:
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        await publisher.recv()

            async def flood(count: int) -> int:
                """Publish `count` messages; the server's peak RSS meanwhile (KiB)."""
                peak = _rss_kib(pids)
                for number in range(count):
                    frame = {"type": "publish", "channel": "room:flood", "data": payload}
                    await send(publisher, frame)
                    if number % 100 == 0:
                        peak = max(peak, _rss_kib(pids))
                await asyncio.sleep(1)
                return max(peak, _rss_kib(pids))

            reader = asyncio.create_task(drain_own_copies())
            # The same flood without the stuck client first: the server's memory for this
            # traffic (the allocator's working set), which the measured flood adds to.
            baseline = await flood(3500)
            stuck = await asyncio.to_thread(_stuck_client, live.server.port, slow, "room:flood")
            peak = await flood(3500)  # 52 MB at a client that reads none of it
            reader.cancel()
        assert await asyncio.to_thread(_close_code_of_stuck, stuck) == 1013
        growth_mb = (peak - baseline) / 1024
        # What the stuck client costs is bounded by its outbox (64 frames of 15 kB here)
        # and one socket's buffers, not by the 52 MB it did not read: held, that backlog
        # would show at about three times its size (each frame kept as published, parsed
        # and rendered). What remains is the allocator's noise: up to 42 MB was seen
        # between two equal floods on a busy machine.
        assert growth_mb < 52, growth_mb
        metrics = (await live.admin.get("/metrics", headers=live.server.metrics_headers)).text
        # Only the client that stopped reading: the publisher, reading its own copies
        # back, was slowed down to its pace, not closed.
        assert 'keel_ws_closes_total{reason="slow_consumer"} 1.0' in metrics


async def test_shutting_down_closes_connections_1001(
    migrated_database: str, tmp_path: Path
) -> None:
    async with running(tmp_path, migrated_database) as live:
        _user_id, access = await live.user()
        async with connected(live.ws_url, access) as ws:
            os.kill(live.server.process.pid, signal.SIGTERM)
            assert await _close_code(ws) == 1001


async def test_credentials_that_expire_unrenewed_close_4401(
    migrated_database: str, tmp_path: Path
) -> None:
    async with running(
        tmp_path,
        migrated_database,
        KEEL_AUTH_ACCESS_TOKEN_TTL_SECONDS="30",
        KEEL_REALTIME_CHECK_INTERVAL_SECONDS="1",
    ) as live:
        user_id, first = await live.user()
        email = (await live.admin.get(f"/api/v1/users/{user_id}")).json()["email"]
        async with connected(live.ws_url, first) as renewed, connected(live.ws_url, first) as left:
            await asyncio.sleep(15)
            fresh = await token(live.server.url, email)
            await send(renewed, {"type": "auth", "token": fresh})
            assert await receive(renewed) == {"type": "ready", "user_id": user_id}
            # The first token expires about 30 s after it was issued.
            assert await _close_code(left, within=25) == 4401
            await send(renewed, {"type": "ping"})
            assert await receive(renewed) == {"type": "pong"}


async def test_realtime_shows_in_metrics(migrated_database: str, tmp_path: Path) -> None:
    async with running(tmp_path, migrated_database) as live:
        _user_id, access = await live.user()
        async with connected(live.ws_url, access) as ws:
            await subscribe(ws, "room:m")
            await send(ws, {"type": "subscribe", "channel": "room:m", "since": "1-0"})
            assert (await receive(ws))["type"] == "subscribed"
            assert (await receive(ws))["type"] == "gap"
            metrics = (await live.admin.get("/metrics", headers=live.server.metrics_headers)).text
            assert "keel_ws_connections 1.0" in metrics
            assert 'keel_ws_frames_total{direction="in"}' in metrics
            assert 'keel_ws_frames_total{direction="out"}' in metrics
            assert "keel_ws_gaps_total 1.0" in metrics
        async with connect(live.ws_url) as bad:
            await send(bad, {"type": "auth", "token": "nope"})
            assert await _close_code(bad) == 4401
        metrics = (await live.admin.get("/metrics", headers=live.server.metrics_headers)).text
        assert 'keel_ws_closes_total{reason="bad_credentials"} 1.0' in metrics


async def test_the_server_pings_and_drops_a_peer_that_never_answers(
    migrated_database: str, tmp_path: Path
) -> None:
    async with running(
        tmp_path,
        migrated_database,
        KEEL_REALTIME_PING_INTERVAL_SECONDS="1",
        KEEL_REALTIME_PING_TIMEOUT_SECONDS="1",
    ) as live:
        _user_id, access = await live.user()
        # The `websockets` client answers pings by itself: this one answers none.
        silent = await asyncio.to_thread(_stuck_client, live.server.port, access, "room:quiet")
        started = time.monotonic()
        code = await asyncio.to_thread(_close_code_of_stuck, silent)
        assert code == 1011  # "keepalive ping timeout"
        assert time.monotonic() - started < 8
