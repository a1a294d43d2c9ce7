"""Periodic jobs: enqueue each one once per interval, whichever process gets there first.

Intervals are aligned to the wall clock, so every process agrees on which slot is due;
`claim` decides who enqueues it (always this process in-process; one SET NX per slot in
Redis when several `keel worker`s run the schedule).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import structlog

from keel.config import Settings
from keel.core.jobs.definition import JobCall, Periodic

log = structlog.get_logger("keel.jobs")

Claim = Callable[[str, int, float], Awaitable[bool]]


async def claim_always(_job: str, _slot: int, _interval: float) -> bool:
    return True


async def run_schedule(
    periodic: Sequence[Periodic],
    settings: Settings,
    enqueue: Callable[[JobCall], Awaitable[None]],
    claim: Claim = claim_always,
) -> None:
    """Run until cancelled."""
    async with asyncio.TaskGroup() as group:
        for entry in periodic:
            group.create_task(_every(entry, settings, enqueue, claim))


async def _every(
    entry: Periodic,
    settings: Settings,
    enqueue: Callable[[JobCall], Awaitable[None]],
    claim: Claim,
) -> None:
    interval = entry.interval(settings)
    name = entry.job.name
    while True:
        await asyncio.sleep(interval - time.time() % interval)
        slot = int(time.time() // interval)
        try:
            if await claim(name, slot, interval):
                await enqueue(entry.job.call())
        except Exception:
            # The schedule must outlive one bad slot (Redis away for a moment, say).
            log.exception("schedule_failed", job=name, slot=slot)
