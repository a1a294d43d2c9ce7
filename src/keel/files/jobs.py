"""Files' background work: deleting the bytes of a deleted user's files, and the
periodic sweep (files/sweep.py)."""

from __future__ import annotations

from datetime import timedelta

import structlog

from keel.config import Settings
from keel.core.jobs import JobContext, Periodic, job
from keel.files.sweep import sweep

log = structlog.get_logger("keel.files")


@job("files.delete_objects", max_retries=8)
async def delete_objects(ctx: JobContext, keys: list[str]) -> None:
    """Delete stored objects whose rows are gone (deleting one that is already gone is
    not an error, so a retry after a partial run is safe)."""
    for key in keys:
        await ctx.storage.delete(key)


@job("files.sweep_storage", max_retries=0, time_limit_ms=60 * 60_000)
async def sweep_storage(ctx: JobContext) -> None:
    report = await sweep(
        ctx.database,
        ctx.storage,
        grace=timedelta(seconds=ctx.settings.storage.sweep_grace_seconds),
    )
    log.info(
        "storage_swept",
        objects=report.objects_seen,
        files=report.files_seen,
        orphans_removed=len(report.orphans_removed),
        orphans_in_grace=report.orphans_kept,
        incomplete_uploads_removed=report.incomplete_removed,
        files_missing_bytes=len(report.missing),
    )
    for file_id, key in report.missing:
        log.error("file_object_missing", file_id=file_id, storage_key=key)


def _sweep_interval(settings: Settings) -> float:
    return settings.storage.sweep_interval_seconds


SWEEP = Periodic(sweep_storage, _sweep_interval)
JOBS = (delete_objects,)
