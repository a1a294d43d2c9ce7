"""Redis stopped or hung: what needs it degrades as docs/failure-modes.md says, within
the Redis timeouts; the database pool is untouched, so API keys and database routes keep
working; nothing answers 500; and everything comes back by itself.

One Redis of the module's own (never the machine's shared one) and one server.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.realtime.support import (
    ADMIN_EMAIL,
    PASSWORD,
    Live,
    connected,
    receive,
    running,
    send,
    subscribe,
)
from tests.reliability.conftest import (
    FAST_FAILING,
    RECOVERY_SECONDS,
    Caller,
    api_key_of,
    assert_unavailable,
    eventually,
)
from tests.support.redis_server import OwnRedis

# The module's live server and accounts serve all its tests (conftest.py).
pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.rows_shared_by_module]

# What a request may cost while Redis does not answer: one Redis timeout (1 s in
# FAST_FAILING) and the database's own work, with room for a busy machine. Failing
# fast is the requirement here, so the bound is what is tested.
WITHIN_SECONDS = 4.0


@dataclass
class RedisOutage:
    live: Live
    redis: OwnRedis
    key: Caller
    token: Caller

    async def timed(
        self, method: str, path: str, caller: Caller | None = None, **options: object
    ) -> httpx.Response:
        started = time.monotonic()
        response = await self.live.admin.request(
            method,
            path,
            headers=caller.headers if caller else None,
            **options,  # type: ignore[arg-type]
        )
        took = time.monotonic() - started
        assert took < WITHIN_SECONDS, (method, path, response.status_code, took)
        assert response.status_code != 500, response.text
        return response

    async def expect_degraded(self) -> None:
        """What docs/failure-modes.md promises while Redis is away."""
        assert (await self.timed("GET", "/health")).status_code == 200
        ready = await self.timed("GET", "/ready")
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"] == {"database": "ok", "redis": "fail", "migrations": "ok"}
        # The database needs no Redis: API keys, and access tokens (the revocation check
        # falls back to the database), read and write as usual.
        for caller in (self.key, self.token):
            listed = await self.timed("GET", "/api/v1/items", caller)
            assert listed.status_code == 200, listed.text
            created = await self.timed("POST", "/api/v1/items", caller, json={"title": "x"})
            assert created.status_code == 201, created.text
        # Rate limits fail closed (they are the brake on password guessing): 503.
        assert_unavailable(
            await self.timed(
                "POST",
                "/api/v1/auth/token",
                data={"username": ADMIN_EMAIL, "password": PASSWORD},
            )
        )
        # Ending a session needs the revocation store: refused, nothing changes.
        assert_unavailable(await self.timed("POST", "/api/v1/auth/logout-all", self.token))
        listed = await self.timed("GET", "/api/v1/items", self.token)
        assert listed.status_code == 200, listed.text

    async def expect_recovery(self) -> None:
        async def recovered() -> bool:
            ready = await self.live.admin.get("/ready")
            token = await self.live.admin.post(
                "/api/v1/auth/token",
                data={"username": ADMIN_EMAIL, "password": PASSWORD},
            )
            return ready.status_code == 200 and token.status_code == 200

        await eventually(recovered, RECOVERY_SECONDS, "recovery after Redis came back")
        assert self.live.server.process.poll() is None
        assert "unhandled_error" not in self.live.server.log_events(), self.live.server.output()


@pytest.fixture(scope="module")
async def outage(
    own_redis: OwnRedis, migrated_database: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RedisOutage]:
    folder = tmp_path_factory.mktemp("redis-outages")
    settings = {
        **FAST_FAILING,
        "KEEL_REDIS_URL": own_redis.url,
        # A small pool: were Redis waits to hold connections, it would run out at once.
        "KEEL_DATABASE_POOL_SIZE": "2",
        "KEEL_DATABASE_MAX_OVERFLOW": "1",
    }
    async with running(folder, migrated_database, **settings) as live:
        _user_id, access = await live.user()
        key = await api_key_of(live.admin)
        yield RedisOutage(
            live, own_redis, key, Caller("token", {"Authorization": f"Bearer {access}"})
        )


@pytest.fixture
async def healthy(outage: RedisOutage) -> RedisOutage:
    outage.redis.start()
    await outage.expect_recovery()
    return outage


async def _realtime_degrades(outage: RedisOutage, ws: ClientConnection) -> None:
    """Publishing answers an error frame within the Redis timeout; the connection stays."""
    await send(ws, {"type": "publish", "channel": "room:outage", "data": "lost"})
    answer = await receive(ws, timeout=WITHIN_SECONDS)
    assert answer["type"] == "error", answer
    assert answer["code"] == "SERVICE_UNAVAILABLE", answer
    await send(ws, {"type": "ping"})
    assert await receive(ws) == {"type": "pong"}


async def _realtime_back(ws: ClientConnection) -> None:
    await send(ws, {"type": "publish", "channel": "room:outage", "data": "after"})
    answer = await receive(ws, timeout=WITHIN_SECONDS)
    assert answer["type"] == "message", answer
    assert answer["data"] == "after", answer


async def test_redis_stopped_then_started(healthy: RedisOutage) -> None:
    access = healthy.token.headers["Authorization"].removeprefix("Bearer ")
    async with connected(healthy.live.ws_url, access) as ws:
        await subscribe(ws, "room:outage")
        healthy.redis.stop()
        await healthy.expect_degraded()
        await _realtime_degrades(healthy, ws)
        healthy.redis.start()
        await healthy.expect_recovery()
        await _realtime_back(ws)


async def test_redis_hung_leaves_the_database_pool_alone(healthy: RedisOutage) -> None:
    access = healthy.token.headers["Authorization"].removeprefix("Bearer ")
    async with connected(healthy.live.ws_url, access) as ws:
        await subscribe(ws, "room:outage")
        healthy.redis.freeze()
        try:
            await _hung(healthy, ws)
        finally:
            healthy.redis.thaw()
        await healthy.expect_recovery()
        await _realtime_back(ws)


async def _hung(healthy: RedisOutage, ws: ClientConnection) -> None:
    """While Redis hangs: degraded, and the pool left to the requests that need it."""
    await healthy.expect_degraded()
    await _realtime_degrades(healthy, ws)
    # Many token requests at once while Redis hangs: none may hold a pooled
    # connection while waiting on it, so API-key requests (no Redis at all) still
    # get a connection at once from the 3-connection pool.
    answers: list[tuple[str, int, float]] = []

    async def call(caller: Caller) -> None:
        started = time.monotonic()
        response = await healthy.live.admin.get("/api/v1/items", headers=caller.headers)
        answers.append((caller.name, response.status_code, time.monotonic() - started))

    async with anyio.create_task_group() as group:
        for number in range(40):
            group.start_soon(call, healthy.token if number % 4 else healthy.key)
    assert {status for _name, status, _took in answers} == {200}, answers
    slowest_key = max(took for name, _status, took in answers if name == healthy.key.name)
    assert slowest_key < WITHIN_SECONDS, answers
