"""Reliability tests: real `keel serve` processes, and dependencies they own and break.

Each module that breaks PostgreSQL or Redis starts its own (tests/support/pg_cluster.py,
tests/support/redis_server.py) and never touches the machine's shared servers, so these
tests run the same with and without KEEL_TEST_DATABASE_URL. Timeouts in the servers'
settings are short, so that failing fast is seen quickly.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest

from keel.config import DatabaseSettings, Settings
from keel.core import migrations
from keel.core.db import create_engine
from tests.support.assertions import assert_error
from tests.support.pg_cluster import PgCluster
from tests.support.redis_server import OwnRedis

# Short enough to see a dependency fail within seconds; each is a setting of its own.
FAST_FAILING = {
    "KEEL_DATABASE_POOL_TIMEOUT": "2",
    "KEEL_DATABASE_STATEMENT_TIMEOUT": "3",
    "KEEL_DATABASE_PING_AFTER_IDLE_SECONDS": "0",
    "KEEL_REDIS_CONNECT_TIMEOUT": "1",
    "KEEL_REDIS_SOCKET_TIMEOUT": "1",
    "KEEL_LOG_FORMAT": "json",
}
RECOVERY_SECONDS = 30.0


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL cluster of this module's own (stopped, frozen, killed at will)."""
    with PgCluster.create() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def own_redis() -> Iterator[OwnRedis]:
    with OwnRedis.started() as redis:
        yield redis


async def migrated(url: str, data_dir: Path) -> str:
    settings = Settings(_env_file=None, data_dir=data_dir, database=DatabaseSettings(url=url))
    engine = create_engine(settings)
    try:
        await migrations.upgrade(engine, settings)
    finally:
        await engine.dispose()
    return url


@pytest.fixture(scope="module")
async def cluster_database(pg_cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated database on the module's cluster."""
    url = pg_cluster.create_database(f"keel_{uuid.uuid4().hex[:10]}")
    return await migrated(url, tmp_path_factory.mktemp("migrate"))


@dataclass
class Caller:
    """Headers of one way of calling the API."""

    name: str
    headers: dict[str, str]


async def api_key_of(admin: httpx.AsyncClient) -> Caller:
    created = await admin.post("/api/v1/api-keys", json={"name": "reliability"})
    assert created.status_code == 201, created.text
    # As a bearer value: it takes precedence over any Authorization a client sets.
    return Caller("api key", {"Authorization": f"Bearer {created.json()['key']}"})


def assert_unavailable(response: httpx.Response) -> None:
    """503 in the error shape, with Retry-After: a dependency is down, never a 500."""
    assert_error(response, 503, "SERVICE_UNAVAILABLE")
    assert int(response.headers["retry-after"]) > 0


async def eventually(
    check: Callable[[], Awaitable[bool]], within: float, what: str, pause: float = 0.2
) -> float:
    """Seconds until `check()` holds; fails saying `what` after `within` seconds."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > within:
            pytest.fail(f"{what}: not within {within} s")
        await anyio.sleep(pause)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client
