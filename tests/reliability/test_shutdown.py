"""Stopping: SIGTERM lets twenty requests in flight finish, refuses new connections and
closes WebSockets with 1001, within the grace period; SIGKILL in the middle of uploads
and item writes loses nothing that was acknowledged and leaves no half-written file.

(tests/test_server.py covers one request in flight and the grace period's bound;
this is the same under load, with a WebSocket open.)
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest
from sqlalchemy import text

from keel.config import DatabaseSettings, Settings
from keel.core.db import create_engine
from tests.realtime.support import connected, running
from tests.realtime.test_failures import _close_code
from tests.reliability.conftest import FAST_FAILING
from tests.support.servers import live_env, wait_for_exit, wait_until_refused
from tests.test_server import EXIT_AFTER_GRACEFUL_SIGTERM, SLOW_FACTORY, wait_until_in_flight

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

IN_FLIGHT = 20


async def test_sigterm_with_twenty_requests_in_flight(
    migrated_database: str, tmp_path: Path
) -> None:
    async with running(
        tmp_path, migrated_database, "--factory", SLOW_FACTORY, KEEL_LOG_FORMAT="json"
    ) as live:
        _user_id, access = await live.user()
        answers: list[httpx.Response] = []
        limits = httpx.Limits(max_connections=IN_FLIGHT + 5)
        async with (
            connected(live.ws_url, access) as ws,
            httpx.AsyncClient(base_url=live.server.url, timeout=20, limits=limits) as client,
        ):

            async def slow_request() -> None:
                answers.append(await client.get("/slow", params={"seconds": 2}))

            async with anyio.create_task_group() as group:
                for _ in range(IN_FLIGHT):
                    group.start_soon(slow_request)
                # The twenty, and the /metrics request that counts them.
                await wait_until_in_flight(live.admin, live.server, IN_FLIGHT + 1)
                live.server.process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                # New connections are refused at once, while the twenty still run.
                await wait_until_refused(live.server.port, timeout=1.0)
                assert len(answers) < IN_FLIGHT
                assert await _close_code(ws) == 1001
            code = await wait_for_exit(live.server.process, timeout=10)
            stopped_after = time.monotonic() - signalled

    assert [(answer.status_code, answer.json()) for answer in answers] == [
        (200, {"done": True})
    ] * IN_FLIGHT
    assert code == EXIT_AFTER_GRACEFUL_SIGTERM, live.server.output()
    # Within the grace period (30 s by default): the requests' own 2 s and the shutdown.
    assert stopped_after < 10, stopped_after
    assert "resources_closed" in live.server.log_events()


async def _keep_writing(
    client: httpx.AsyncClient, acked_items: list[str], acked_files: dict[str, str], number: int
) -> None:
    """Write items and upload files until the server dies; remember each 2xx."""
    sequence = 0
    while True:
        sequence += 1
        try:
            if number % 2:
                content = f"{number}-{sequence}-".encode() * 40_000  # about 0.5 MB
                response = await client.post(
                    "/api/v1/files", files={"file": (f"f{sequence}.txt", content, "text/plain")}
                )
                if response.status_code == 201:
                    acked_files[response.json()["id"]] = hashlib.sha256(content).hexdigest()
            else:
                response = await client.post(
                    "/api/v1/items", json={"title": f"w{number}-{sequence}"}
                )
                if response.status_code == 201:
                    acked_items.append(response.json()["id"])
        except httpx.TransportError:
            return  # the server is gone


async def test_sigkill_mid_writes_loses_nothing_acknowledged(
    cluster_database: str, tmp_path: Path
) -> None:
    acked_items: list[str] = []
    acked_files: dict[str, str] = {}
    async with running(tmp_path, cluster_database, **FAST_FAILING) as live:
        _user_id, access = await live.user()
        headers = {"Authorization": f"Bearer {access}"}
        async with (
            httpx.AsyncClient(base_url=live.server.url, headers=headers, timeout=20) as client,
            anyio.create_task_group() as group,
        ):
            for number in range(6):
                group.start_soon(_keep_writing, client, acked_items, acked_files, number)
            await anyio.sleep(2.5)
            os.killpg(live.server.process.pid, signal.SIGKILL)
    assert acked_items, "no item write was acknowledged before the kill"
    assert acked_files, "no upload was acknowledged before the kill"

    # After a restart, every acknowledged write is there, bytes and all.
    async with running(tmp_path, cluster_database, **FAST_FAILING) as live:
        for item_id in acked_items:
            found = await live.admin.get(f"/api/v1/items/{item_id}")
            assert found.status_code == 200, found.text
        for file_id, digest in acked_files.items():
            content = await live.admin.get(f"/api/v1/files/{file_id}/content")
            assert content.status_code == 200, content.text
            assert hashlib.sha256(content.content).hexdigest() == digest

    # The sweep (`keel files check`, no grace period) leaves exactly the objects the
    # rows name: nothing half-written, no orphan, no row without its bytes.
    env = live_env(tmp_path, cluster_database, KEEL_STORAGE_SWEEP_GRACE_SECONDS="0")
    check = subprocess.run(
        [sys.executable, "-m", "keel", "files", "check"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    storage = tmp_path / "files"
    assert not list((storage / "incoming").iterdir()), "half-written uploads remain"
    stored = {path.name for path in (storage / "objects").rglob("*") if path.is_file()}
    assert stored == await _storage_keys(cluster_database, tmp_path)


async def _storage_keys(database_url: str, folder: Path) -> set[str]:
    engine = create_engine(
        Settings(_env_file=None, data_dir=folder, database=DatabaseSettings(url=database_url))
    )
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT storage_key FROM files"))
            return {row[0] for row in rows}
    finally:
        await engine.dispose()
