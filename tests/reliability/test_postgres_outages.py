"""PostgreSQL stopped, shutting down, its connections killed, or hung: Keel answers 503
with Retry-After (never 500) within its timeouts, stays alive, and recovers by itself.

One cluster and one server for the module: each test breaks the database, checks what
clients see, then mends it and waits for the server to recover without a restart.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import asyncpg
import httpx
import pytest

from tests.realtime.support import Live, running
from tests.reliability.conftest import (
    FAST_FAILING,
    RECOVERY_SECONDS,
    Caller,
    api_key_of,
    assert_unavailable,
    eventually,
)
from tests.support.pg_cluster import PgCluster

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SLOW_FACTORY = "tests.support.slow_app:create"
# How long a request may take to fail while the database is down: the pool's connect
# and acquire timeout (2 s) or the statement timeout (3 s) of FAST_FAILING, plus room
# for a busy machine. The requirement is this bound: clients are told quickly.
FAIL_WITHIN_SECONDS = 8.0


@dataclass
class Outage:
    live: Live
    cluster: PgCluster
    callers: list[Caller]
    database: str

    async def get(self, path: str, caller: Caller | None = None) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        response = await self.live.admin.get(
            path, headers=caller.headers if caller else None, timeout=30
        )
        return response, time.monotonic() - started

    async def expect_database_down(self) -> None:
        """Every database route 503 in time; /health 200; /ready 503 naming the database."""
        health, _ = await self.get("/health")
        assert health.status_code == 200, health.text
        for caller in self.callers:
            response, took = await self.get("/api/v1/items", caller)
            assert_unavailable(response)
            assert took < FAIL_WITHIN_SECONDS, (caller.name, took)
        # SQLAlchemy's engine (jobs, readiness, migrations) wraps the driver's errors.
        engine, took = await self.get("/engine-ping")
        assert_unavailable(engine)
        assert took < FAIL_WITHIN_SECONDS, took
        ready, took = await self.get("/ready")
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"]["database"] == "fail", ready.text
        assert ready.headers["retry-after"]
        assert took < FAIL_WITHIN_SECONDS, took

    async def expect_recovery(self) -> float:
        """Seconds until every route answers again, without restarting the server."""

        async def all_well() -> bool:
            for caller in self.callers:
                if (await self.get("/api/v1/items", caller))[0].status_code != 200:
                    return False
            engine = (await self.get("/engine-ping"))[0]
            ready = (await self.get("/ready"))[0]
            return engine.status_code == 200 and ready.status_code == 200

        took = await eventually(all_well, RECOVERY_SECONDS, "recovery after the outage")
        assert self.live.server.process.poll() is None  # the same process, never restarted
        return took

    def no_500s(self) -> None:
        events = self.live.server.log_events()
        assert "unhandled_error" not in events, self.live.server.output()
        assert "dependency_unavailable" in events  # the 503s were seen as outages

    async def terminate_keel_backends(self) -> int:
        """pg_terminate_backend on every connection to Keel's database (not ours)."""
        connection = await asyncpg.connect(
            self.cluster.url().replace("postgresql+asyncpg", "postgresql"), timeout=5
        )
        try:
            return int(
                await connection.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    self.database,
                )
            )
        finally:
            await connection.close()


@pytest.fixture(scope="module")
async def outage(
    pg_cluster: PgCluster, cluster_database: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Outage]:
    folder = tmp_path_factory.mktemp("pg-outages")
    async with running(folder, cluster_database, "--factory", SLOW_FACTORY, **FAST_FAILING) as live:
        _user_id, access = await live.user()
        callers = [
            await api_key_of(live.admin),
            Caller("access token", {"Authorization": f"Bearer {access}"}),
        ]
        database = cluster_database.rsplit("/", 1)[-1]
        yield Outage(live, pg_cluster, callers, database)


@pytest.fixture
async def healthy(outage: Outage) -> Outage:
    """The outage module's server, answering normally at the start of the test."""
    if not outage.cluster.is_running():
        outage.cluster.start()
    await outage.expect_recovery()
    return outage


async def test_postgres_stopped_fast_then_started(healthy: Outage) -> None:
    healthy.cluster.stop("fast")
    await healthy.expect_database_down()
    healthy.cluster.start()
    await healthy.expect_recovery()
    healthy.no_500s()


async def test_postgres_shutting_down_smart_refuses_new_connections(healthy: Outage) -> None:
    # A smart shutdown waits for every session to end, refusing new ones meanwhile
    # (57P03, "the database system is shutting down"). A session of the test's own
    # keeps it in that state; Keel's pooled connections are ended first, so that every
    # request needs a new one.
    holder = await asyncpg.connect(
        healthy.cluster.url().replace("postgresql+asyncpg", "postgresql"), timeout=5
    )
    try:
        assert await healthy.terminate_keel_backends() > 0
        healthy.cluster.stop("smart", wait=False)
        await anyio.sleep(0.5)
        await healthy.expect_database_down()
    finally:
        await holder.close()
    await eventually(
        lambda: _stopped(healthy.cluster), 30, "the smart shutdown to finish", pause=0.1
    )
    healthy.cluster.start()
    await healthy.expect_recovery()
    healthy.no_500s()


async def _stopped(cluster: PgCluster) -> bool:
    return not cluster.is_running()


async def test_pooled_connections_killed_idle_and_mid_statement(healthy: Outage) -> None:
    # Idle: the next request finds its pooled connection closed and takes a fresh one.
    assert await healthy.terminate_keel_backends() > 0
    for caller in healthy.callers:
        response, _ = await healthy.get("/api/v1/items", caller)
        assert response.status_code == 200, response.text

    # Mid-statement: the items table is locked, so Keel's reads wait inside their
    # statements; their backends are then killed under them.
    locker = await asyncpg.connect(
        healthy.cluster.url(healthy.database).replace("postgresql+asyncpg", "postgresql")
    )
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        answers: list[httpx.Response] = []
        async with anyio.create_task_group() as group:

            async def read(caller: Caller) -> None:
                answers.append((await healthy.get("/api/v1/items", caller))[0])

            for caller in healthy.callers:
                group.start_soon(read, caller)
            await _waiting_on_lock(healthy.cluster, healthy.database, len(healthy.callers))
            killed = await locker.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'",
                healthy.database,
            )
            assert killed == len(healthy.callers)
        await transaction.rollback()
    finally:
        await locker.close()
    for answer in answers:
        assert_unavailable(answer)  # the statement's connection died: 503, not 500
    await healthy.expect_recovery()
    healthy.no_500s()


async def _waiting_on_lock(cluster: PgCluster, database: str, count: int) -> None:
    # Watched from a connection of its own: inside the locking transaction,
    # pg_stat_activity would show the same snapshot on every read.
    observer = await asyncpg.connect(cluster.url().replace("postgresql+asyncpg", "postgresql"))

    async def waiting() -> bool:
        found = await observer.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
            database,
        )
        return int(found) >= count

    try:
        # Within the statement timeout (3 s), after which Keel gives up on its own.
        await eventually(waiting, 2.5, f"{count} statements waiting on the lock", pause=0.05)
    finally:
        await observer.close()


async def test_postgres_hung_then_thawed(healthy: Outage) -> None:
    # SIGSTOP: connections stay open and the kernel still accepts new ones, but nothing
    # answers; the statement and connect timeouts must turn that into 503s.
    healthy.cluster.freeze()
    try:
        await healthy.expect_database_down()
    finally:
        healthy.cluster.thaw()
    await healthy.expect_recovery()
    healthy.no_500s()
