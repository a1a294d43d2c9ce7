"""Ended sessions are refused on the next request, however the revocation cache fares:
across processes, after a restart, after Redis lost its data, and with Redis down."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import update

from keel.auth.revocation import InProcessRevocations, RedisRevocations
from keel.models import AuthSession
from keel.models.base import utcnow
from keel.resources import Resources
from tests.factories.users import signed_in

pytestmark = pytest.mark.anyio

TTL = 900


async def _sid(app: FastAPI, client: httpx.AsyncClient) -> uuid.UUID:
    """A live session of a freshly signed-in user."""
    who = await signed_in(app, client)
    response = await client.get("/api/v1/auth/sessions", headers=who.headers)
    return uuid.UUID(response.json()["data"][0]["id"])


async def _end_in_database(resources: Resources, sid: uuid.UUID) -> None:
    async with resources.sessionmaker() as session:
        await session.execute(
            update(AuthSession).where(AuthSession.id == sid).values(ended_at=utcnow())
        )
        await session.commit()


async def test_in_process_cache_remembers_ended_sessions_after_a_restart(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    resources: Resources = app.state.resources
    live, ended = await _sid(app, client), await _sid(app, client)
    await _end_in_database(resources, ended)
    restarted = InProcessRevocations(resources.database, TTL)
    await restarted.load()
    assert await restarted.is_revoked(ended)
    assert not await restarted.is_revoked(live)


async def test_sessions_ended_longer_ago_than_a_token_lives_are_forgotten(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    resources: Resources = app.state.resources
    sid = await _sid(app, client)
    async with resources.sessionmaker() as session:
        await session.execute(
            update(AuthSession)
            .where(AuthSession.id == sid)
            .values(ended_at=utcnow() - timedelta(seconds=TTL + 60))
        )
        await session.commit()
    restarted = InProcessRevocations(resources.database, TTL)
    await restarted.load()
    # No token issued before the end can still be alive, so nothing needs remembering.
    assert not await restarted.is_revoked(sid)


async def test_in_process_cache_that_could_not_load_loads_on_first_check(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    resources: Resources = app.state.resources
    live, ended = await _sid(app, client), await _sid(app, client)
    await _end_in_database(resources, ended)
    # As after a start-up while the database was down: load() never ran (or failed).
    unloaded = InProcessRevocations(resources.database, TTL)
    assert await unloaded.is_revoked(ended)
    assert not await unloaded.is_revoked(live)


@pytest.fixture
async def redis_client(requires_redis: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(requires_redis)
    yield client
    await client.aclose()


async def test_redis_revocation_reaches_another_process(
    app: FastAPI, client: httpx.AsyncClient, redis_client: Redis, redis_prefix: str
) -> None:
    resources: Resources = app.state.resources
    prefix = f"{redis_prefix}rev-{uuid.uuid4().hex[:6]}:"
    one = RedisRevocations(redis_client, prefix, resources.database, TTL)
    other = RedisRevocations(redis_client, prefix, resources.database, TTL)
    await one.load()
    sid = await _sid(app, client)
    assert not await other.is_revoked(sid)
    await one.revoke([sid])
    assert await other.is_revoked(sid)
    assert 0 < await redis_client.ttl(f"{prefix}revoked:{sid}") <= TTL


async def test_redis_that_lost_its_data_is_reloaded_from_the_database(
    app: FastAPI, client: httpx.AsyncClient, redis_client: Redis, redis_prefix: str
) -> None:
    resources: Resources = app.state.resources
    prefix = f"{redis_prefix}rev-{uuid.uuid4().hex[:6]}:"
    revocations = RedisRevocations(redis_client, prefix, resources.database, TTL)
    await revocations.load()
    sid = await _sid(app, client)
    await _end_in_database(resources, sid)
    await revocations.revoke([sid])
    # Redis restarts without persistence: every key is gone.
    await redis_client.delete(f"{prefix}revoked:{sid}", f"{prefix}revoked-loaded")
    assert await revocations.is_revoked(sid)  # answered by the database
    assert await redis_client.exists(f"{prefix}revoked:{sid}") == 1  # and reloaded


async def test_unreachable_redis_falls_back_to_the_database(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    resources: Resources = app.state.resources
    live, ended = await _sid(app, client), await _sid(app, client)
    await _end_in_database(resources, ended)
    down = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    try:
        revocations = RedisRevocations(down, "x:", resources.database, TTL)
        assert await revocations.is_revoked(ended)
        assert not await revocations.is_revoked(live)
    finally:
        await down.aclose()


async def test_ending_a_session_stops_its_token_on_the_next_request(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    who = await signed_in(app, client)
    assert (await client.get("/api/v1/users/me", headers=who.headers)).status_code == 200
    response = await client.post("/api/v1/auth/logout", json={"refresh_token": who.refresh_token})
    assert response.status_code == 204
    refused = await client.get("/api/v1/users/me", headers=who.headers)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'
