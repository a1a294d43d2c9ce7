"""Sign-in against a real `keel serve` process: a standard OAuth 2.0 client library, and
the login rate limit shared by two worker processes through Redis."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import pytest
from authlib.integrations.httpx_client import AsyncOAuth2Client

from tests.fixtures import databases
from tests.support.servers import (
    STARTUP_SECONDS,
    live_env,
    request_counts_by_worker,
    serve,
    wait_until_healthy,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ADMIN_EMAIL = "first.admin@example.com"
ADMIN_PASSWORD = "a long and uncommon passphrase"


async def test_authlib_logs_in_with_the_password_grant_and_refreshes(
    migrated_database: str, tmp_path: Path
) -> None:
    env = live_env(
        tmp_path,
        migrated_database,
        # The first admin is created at start: the account this client signs in with.
        KEEL_FIRST_ADMIN_EMAIL=ADMIN_EMAIL,
        KEEL_FIRST_ADMIN_PASSWORD=ADMIN_PASSWORD,
    )
    with serve(tmp_path, env) as server:
        await wait_until_healthy(server)
        token_url = f"{server.url}/api/v1/auth/token"
        async with AsyncOAuth2Client(token_endpoint=token_url) as oauth:
            first = await oauth.fetch_token(
                token_url, username=ADMIN_EMAIL, password=ADMIN_PASSWORD
            )
            assert first["token_type"].lower() == "bearer"
            me = await oauth.get(f"{server.url}/api/v1/users/me")
            assert me.status_code == 200, me.text
            assert me.json()["email"] == ADMIN_EMAIL
            assert me.json()["role"] == "admin"

            second = await oauth.refresh_token(token_url)
            assert second["refresh_token"] != first["refresh_token"]
            assert second["access_token"] != first["access_token"]
            again = await oauth.get(f"{server.url}/api/v1/users/me")
            assert again.status_code == 200, again.text

        async with httpx.AsyncClient(base_url=server.url) as plain:
            # The first refresh token was spent by the refresh above: its reuse ends the
            # family, so even the newest access token stops working.
            reused = await plain.post(
                "/api/v1/auth/token",
                data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
            )
            assert reused.status_code == 400
            assert reused.json()["error"] == "invalid_grant"
            after = await plain.get(
                "/api/v1/users/me",
                headers={"Authorization": f"Bearer {second['access_token']}"},
            )
            assert after.status_code == 401


async def wait_until_both_workers_answer(url: str, metrics_dir: Path, scratch: Path) -> None:
    """The first worker up answers /health before the second has started: send probes
    until each worker's own metrics show it answered some."""
    labels = {"method": "GET", "route": "/health", "status": "200"}
    deadline = time.monotonic() + STARTUP_SECONDS
    async with httpx.AsyncClient(
        base_url=url,
        limits=httpx.Limits(max_keepalive_connections=0),
        headers={"Connection": "close"},
        timeout=10,
    ) as client:
        while time.monotonic() < deadline:
            async with anyio.create_task_group() as group:
                for _ in range(20):
                    group.start_soon(client.get, "/health")
            counts = request_counts_by_worker(metrics_dir, scratch, labels)
            if len([count for count in counts.values() if count]) == 2:
                return
            await anyio.sleep(0.2)
    pytest.fail("the second worker never answered")


async def test_login_rate_limit_holds_across_two_workers(
    requires_redis: str, redis_prefix: str, migrated_database: str, tmp_path: Path
) -> None:
    limit = 10
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = live_env(
        tmp_path,
        migrated_database,
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        KEEL_REDIS_URL=requires_redis,
        KEEL_REDIS_KEY_PREFIX=f"{redis_prefix}live:",
        KEEL_LIMIT_TOKEN_ACCOUNT=f"{limit}/minute",
    )
    with serve(tmp_path, env, "--workers", "2") as server:
        await wait_until_healthy(server)
        await wait_until_both_workers_answer(server.url, metrics_dir, tmp_path / "warm-up")
        statuses: list[int] = []
        # New connections, several at once, so the kernel spreads them over both workers.
        async with httpx.AsyncClient(
            base_url=server.url,
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"Connection": "close"},
            timeout=10,
        ) as client:

            async def attempt() -> None:
                response = await client.post(
                    "/api/v1/auth/token",
                    data={"username": "nobody@example.com", "password": "wrong password!"},
                )
                statuses.append(response.status_code)

            def served() -> dict[str, dict[int, float]]:
                return {
                    status: request_counts_by_worker(
                        metrics_dir,
                        tmp_path / f"per-worker-{status}",
                        {"method": "POST", "route": "/api/v1/auth/token", "status": status},
                    )
                    for status in ("400", "429")
                }

            def workers_that_answered() -> set[int]:
                return {pid for counts in served().values() for pid, n in counts.items() if n}

            # The kernel may hand a whole burst to one worker: send bursts until both
            # have answered attempts (bounded), so the shared budget is really tested.
            for _ in range(10):
                async with anyio.create_task_group() as group:
                    for _ in range(3 * limit):
                        group.start_soon(attempt)
                if len(workers_that_answered()) == 2:
                    break
            answered = workers_that_answered()
    # One budget for the account, whichever worker answered: exactly `limit` attempts
    # reached the password check, every later one was refused.
    assert sorted(statuses) == [400] * limit + [429] * (len(statuses) - limit), statuses
    await databases.delete_keys(requires_redis, f"{redis_prefix}live:")
    # Both workers answered attempts: the budget was shared across processes.
    assert len(answered) == 2, answered
