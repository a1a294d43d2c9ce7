"""The periodic purge of expired idempotency records."""

from __future__ import annotations

import structlog

from keel.core.jobs import JobContext, job
from keel.idempotency import repository
from keel.idempotency.service import IN_FLIGHT_TIMEOUT
from keel.models.base import utcnow

log = structlog.get_logger("keel.idempotency")


@job("idempotency.purge_expired", max_retries=3)
async def purge_expired_records(ctx: JobContext) -> None:
    now = utcnow()
    async with ctx.database.transaction() as db:
        count = await repository.purge(db, now, now - IN_FLIGHT_TIMEOUT)
    log.info("idempotency_records_purged", count=count)
