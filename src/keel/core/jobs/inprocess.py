"""The embedded runner: jobs run as tasks on the app's own event loop.

Retries with exponential backoff and a time limit per try, like the Dramatiq runner; a
job that fails for good is logged and counted. Nothing is durable: jobs still waiting
when the process stops are logged as abandoned. That is the trade of running with
nothing installed; set KEEL_REDIS_URL for a real queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

import structlog

from keel.config import Settings
from keel.core.jobs.context import JobContext
from keel.core.jobs.definition import JobCall, Periodic
from keel.core.jobs.outcomes import JobOutcomes
from keel.core.jobs.schedule import run_schedule

log = structlog.get_logger("keel.jobs")


class InProcessRunner:
    def __init__(
        self,
        context: JobContext,
        outcomes: JobOutcomes,
        *,
        concurrency: int,
        shutdown_timeout: float,
    ) -> None:
        self.context = context
        self.outcomes = outcomes
        self.shutdown_timeout = shutdown_timeout
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._schedule: asyncio.Task[None] | None = None
        self._closing = False

    def start_schedule(self, periodic: Sequence[Periodic], settings: Settings) -> None:
        if periodic:
            self._schedule = asyncio.get_running_loop().create_task(
                run_schedule(periodic, settings, self.enqueue), name="jobs:schedule"
            )

    async def enqueue(self, call: JobCall) -> None:
        if self._closing:
            self.outcomes.not_enqueued(call.name, RuntimeError("shutting down"), call.kwargs)
            return
        task = asyncio.get_running_loop().create_task(self._run(call), name=f"job:{call.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def join(self) -> None:
        """Wait until no job is running or waiting to retry (tests, shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _run(self, call: JobCall) -> None:
        policy = call.job.retry
        attempt = 1
        while True:
            started = time.perf_counter()
            try:
                async with self._slots, asyncio.timeout(policy.time_limit_ms / 1000):
                    await call.job.fn(self.context, *call.args, **call.kwargs)
            except Exception as error:  # noqa: BLE001 - a job may raise anything
                if attempt > policy.max_retries:
                    self.outcomes.failed(call.name, attempt, error, call.args, call.kwargs)
                    return
                delay_ms = policy.backoff_ms(attempt - 1)
                self.outcomes.retried(call.name, attempt, error, delay_ms)
                attempt += 1
                await asyncio.sleep(delay_ms / 1000)
            else:
                self.outcomes.succeeded(call.name, attempt, time.perf_counter() - started)
                return

    async def close(self) -> None:
        """Stop taking jobs, give running ones the shutdown timeout, then cancel the rest."""
        self._closing = True
        if self._schedule is not None:
            self._schedule.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._schedule
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=self.shutdown_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            log.warning("jobs_abandoned", jobs=sorted(task.get_name() for task in pending))
