"""Crash safety: find stored objects no file refers to, and files whose bytes are gone.

An upload writes its object before its row exists, and a file's object is deleted
after its row: a process killed in between leaves an object nothing refers to. The
sweep removes those once they are older than the grace period (younger ones may belong
to an upload still streaming), and what unfinished uploads left behind (temporary parts
on disk, incomplete multipart uploads on S3). It also walks every row and reports the
ones whose object is missing: that is data loss, for an operator to look at, never
something to paper over. Run periodically as a job, and on demand as
`keel files check`; both work in batches, in constant memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio

from keel.core.db import Database
from keel.core.storage import Storage, StoredObject
from keel.files import repository

BATCH = repository.KEY_BATCH
# Existence checks in flight at once (S3: one HEAD request each).
CONCURRENT_CHECKS = 16

Progress = Callable[[str], None]


@dataclass(slots=True)
class SweepReport:
    objects_seen: int = 0
    files_seen: int = 0
    orphans_removed: list[str] = field(default_factory=list)
    orphans_kept: int = 0  # unreferenced, but young enough to be an upload in flight
    incomplete_removed: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)  # (file id, storage key)

    def describe(self, *, dry_run: bool = False) -> list[str]:
        """What was found, as `keel files check` prints it."""
        verb = "would be deleted" if dry_run else "deleted"
        summary = (
            f"{self.objects_seen} stored objects, {self.files_seen} files: "
            f"{len(self.orphans_removed)} orphaned objects {verb}, "
            f"{self.orphans_kept} unreferenced but younger than the grace period (kept), "
            f"{self.incomplete_removed} unfinished uploads removed, "
            f"{len(self.missing)} files missing their bytes."
        )
        lines = [summary]
        lines += [f"  orphan: {key}" for key in self.orphans_removed]
        lines += [f"  missing: file {file_id} (object {key})" for file_id, key in self.missing]
        return lines


async def sweep(
    database: Database,
    storage: Storage,
    *,
    grace: timedelta,
    remove: bool = True,
    progress: Progress | None = None,
) -> SweepReport:
    """Remove (or with `remove=False` only count) orphaned objects older than `grace`,
    and report files whose object is missing."""
    say = progress or (lambda _line: None)
    report = SweepReport()
    cutoff = datetime.now(UTC) - grace
    if remove:
        report.incomplete_removed = await storage.forget_incomplete(cutoff)
    say("looking for stored objects that no file refers to")
    batch: list[StoredObject] = []
    async for found in storage.objects():
        batch.append(found)
        if len(batch) >= BATCH:
            await _orphans(database, storage, batch, cutoff, remove, report)
            say(f"  {report.objects_seen} objects checked")
            batch = []
    await _orphans(database, storage, batch, cutoff, remove, report)
    say(f"  {report.objects_seen} objects checked")

    say("looking for files whose stored object is missing")
    after: str | None = None
    while True:
        statement, values = repository.keyset_of_keys(after, BATCH)
        async with database.transaction(write=False) as db:
            rows = await db.all(statement, values)
        if not rows:
            break
        report.files_seen += len(rows)
        await _missing(database, storage, rows, report)
        after = rows[-1]["storage_key"]
        say(f"  {report.files_seen} files checked")
    return report


async def _orphans(
    database: Database,
    storage: Storage,
    batch: list[StoredObject],
    cutoff: datetime,
    remove: bool,
    report: SweepReport,
) -> None:
    if not batch:
        return
    report.objects_seen += len(batch)
    async with database.transaction(write=False) as db:
        referenced = await repository.referenced_keys(db, [found.key for found in batch])
    for found in batch:
        if found.key in referenced:
            continue
        if found.modified_at >= cutoff:
            report.orphans_kept += 1
            continue
        if remove:
            await storage.delete(found.key)
        report.orphans_removed.append(found.key)


async def _missing(
    database: Database, storage: Storage, rows: list[dict[str, object]], report: SweepReport
) -> None:
    limit = anyio.Semaphore(CONCURRENT_CHECKS)
    gone: dict[str, str] = {}  # storage key -> file id

    async def check(row: dict[str, object]) -> None:
        key = str(row["storage_key"])
        async with limit:
            if not await storage.exists(key):
                gone[key] = str(row["id"])

    async with anyio.create_task_group() as group:
        for row in rows:
            group.start_soon(check, row)
    if not gone:
        return
    # A file deleted while the batch was checked loses its row, then its bytes: only a
    # row that is still there without its bytes is a loss.
    async with database.transaction(write=False) as db:
        still_there = await repository.referenced_keys(db, list(gone))
    report.missing.extend((gone[key], key) for key in sorted(still_there))
