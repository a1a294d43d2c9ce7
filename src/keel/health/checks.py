"""Readiness checks: can this process serve requests that need its dependencies?"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Literal

import structlog
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from keel.core import migrations

log = structlog.get_logger("keel.health")

CHECK_TIMEOUT_SECONDS = 2.0

CheckResult = Literal["ok", "fail", "behind", "disabled"]


async def _guarded(name: str, check: Awaitable[CheckResult]) -> CheckResult:
    try:
        return await asyncio.wait_for(check, CHECK_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - any failure of a dependency is "fail"; the why is logged
        log.warning("readiness_check_failed", check=name, error=repr(exc))
        return "fail"


async def _database(engine: AsyncEngine) -> CheckResult:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
    return "ok"


async def _redis(redis: Redis | None) -> CheckResult:
    if redis is None:
        return "disabled"
    await redis.ping()
    return "ok"


async def _migrations(engine: AsyncEngine) -> CheckResult:
    current = await migrations.current_revision(engine)
    head = migrations.head_revision()
    if current != head:
        log.warning("migrations_behind", current=current, head=head)
        return "behind"
    return "ok"


async def run_checks(engine: AsyncEngine, redis: Redis | None) -> dict[str, CheckResult]:
    database, cache, schema = await asyncio.gather(
        _guarded("database", _database(engine)),
        _guarded("redis", _redis(redis)),
        _guarded("migrations", _migrations(engine)),
    )
    return {"database": database, "redis": cache, "migrations": schema}
