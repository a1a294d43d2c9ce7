"""Readiness checks: can this process serve requests that need its dependencies?"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Literal

import structlog
from sqlalchemy import text

from keel.core import migrations
from keel.core.resources import Resources

log = structlog.get_logger("keel.health")

CHECK_TIMEOUT_SECONDS = 2.0

CheckResult = Literal["ok", "fail", "behind", "disabled"]


async def _guarded(name: str, check: Awaitable[CheckResult]) -> CheckResult:
    try:
        return await asyncio.wait_for(check, CHECK_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - any failure of a dependency is "fail"; the why is logged
        log.warning("readiness_check_failed", check=name, error=repr(exc))
        return "fail"


async def _database(resources: Resources) -> CheckResult:
    async with resources.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
    return "ok"


async def _redis(resources: Resources) -> CheckResult:
    if resources.redis is None:
        return "disabled"
    await resources.redis.ping()
    return "ok"


async def _migrations(resources: Resources) -> CheckResult:
    current = await migrations.current_revision(resources.engine)
    head = migrations.head_revision()
    if current != head:
        log.warning("migrations_behind", current=current, head=head)
        return "behind"
    return "ok"


async def run_checks(resources: Resources) -> dict[str, CheckResult]:
    database, redis, schema = await asyncio.gather(
        _guarded("database", _database(resources)),
        _guarded("redis", _redis(resources)),
        _guarded("migrations", _migrations(resources)),
    )
    return {"database": database, "redis": redis, "migrations": schema}
