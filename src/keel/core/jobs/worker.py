"""`keel worker`: one process running Dramatiq worker threads over one event loop.

Jobs are async, so the threads hand each job to a shared event loop (Dramatiq's AsyncIO
middleware) and the job context (database engine, mail) is opened once on that loop.
The worker also runs the periodic schedule: every worker does, and a Redis key per slot
lets one of them enqueue each run. Scale out by running more workers; SIGTERM lets
running jobs finish within the graceful timeout, and anything unfinished goes back to
the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Sequence
from typing import Any, cast

import structlog
from dramatiq import Broker, Middleware, Worker
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO, Retries
from prometheus_client import start_http_server

from keel.config import Settings
from keel.core.jobs.context import JobContext, open_job_context
from keel.core.jobs.definition import Job, Periodic
from keel.core.jobs.outcomes import JobOutcomes
from keel.core.jobs.redis_queue import DramatiqQueue, OutcomeMiddleware, create_broker
from keel.core.jobs.schedule import run_schedule
from keel.core.metrics import Metrics

log = structlog.get_logger("keel.worker")


class WorkerStartError(Exception):
    """The worker cannot start; the message says what to change."""


class WorkerLifecycle(Middleware):
    """Opens the job context on the jobs' event loop, runs the schedule, closes both.

    Added after AsyncIO, so its shutdown hook runs before the loop stops."""

    def __init__(self, settings: Settings, metrics: Metrics, periodic: Sequence[Periodic]):
        self.settings = settings
        self.metrics = metrics
        self.periodic = periodic
        self.queue: DramatiqQueue | None = None
        self._stack = contextlib.AsyncExitStack()
        self._context: JobContext | None = None
        self._lock = asyncio.Lock()
        self._schedule: Any = None

    async def context(self) -> JobContext:
        # Opened by the first job: worker threads may take messages before
        # after_worker_boot has run.
        async with self._lock:
            if self._context is None:
                self._context = await self._stack.enter_async_context(
                    open_job_context(self.settings, self.metrics)
                )
        return self._context

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        loop_thread = get_event_loop_thread()
        if loop_thread is None or self.queue is None or not self.periodic:
            return
        queue = self.queue
        client = cast("RedisBroker", broker).client

        async def claim(job: str, slot: int, interval: float) -> bool:
            key = f"{self.settings.redis.key_prefix}schedule:{job}:{slot}"
            won = await asyncio.to_thread(client.set, key, "1", nx=True, ex=max(1, int(interval)))
            return bool(won)

        self._schedule = asyncio.run_coroutine_threadsafe(
            run_schedule(self.periodic, self.settings, queue.enqueue, claim), loop_thread.loop
        )

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        if self._schedule is not None:
            self._schedule.cancel()
        loop_thread = get_event_loop_thread()
        if loop_thread is not None:
            loop_thread.run_coroutine(self._stack.aclose())


class _HideMessageBodies:
    """Dramatiq's worker logs a failing message with its arguments, unredacted; Keel's
    outcome line says the same with secrets redacted, so that record is dropped."""

    def filter(self, record: Any) -> bool:
        return not str(record.msg).startswith("Failed to process message")


def build_worker_broker(
    settings: Settings,
    jobs: Sequence[Job[Any]],
    periodic: Sequence[Periodic],
    metrics: Metrics,
) -> tuple[RedisBroker, DramatiqQueue]:
    broker = create_broker(settings)
    broker.add_middleware(AsyncIO())
    lifecycle = WorkerLifecycle(settings, metrics, periodic)
    broker.add_middleware(lifecycle)
    outcomes = JobOutcomes(metrics)
    broker.add_middleware(OutcomeMiddleware(outcomes), before=Retries)
    queue = DramatiqQueue(broker, jobs, outcomes, lifecycle.context)
    lifecycle.queue = queue
    logging.getLogger("dramatiq.worker.WorkerThread").addFilter(_HideMessageBodies())
    return broker, queue


def start_worker(broker: RedisBroker, threads: int, poll_ms: int = 1000) -> Worker:
    # What Dramatiq's own command line emits first: TimeLimit starts its watchdog here.
    broker.emit_after("process_boot")
    worker = Worker(broker, worker_threads=threads, worker_timeout=poll_ms)
    worker.start()
    return worker


def run_worker(
    settings: Settings,
    jobs: Sequence[Job[Any]],
    periodic: Sequence[Periodic],
    *,
    threads: int,
) -> None:
    """Run until SIGTERM or SIGINT."""
    metrics = Metrics()
    broker, _queue = build_worker_broker(settings, jobs, periodic, metrics)
    port = settings.jobs.worker_metrics_port
    if port:
        try:
            start_http_server(port, addr=settings.server.host, registry=metrics.export_registry())
        except OSError as exc:
            raise WorkerStartError(
                f"cannot serve worker metrics on {settings.server.host}:{port} ({exc.strerror}): "
                "set KEEL_JOBS_WORKER_METRICS_PORT to a free port, or 0 for none."
            ) from exc
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    worker = start_worker(broker, threads)
    log.info(
        "worker_started",
        threads=threads,
        jobs=sorted(job.name for job in jobs),
        metrics_port=port or None,
    )
    stop.wait()
    log.info("worker_stopping", graceful_timeout=settings.server.graceful_timeout)
    worker.stop(timeout=int(settings.server.graceful_timeout * 1000))
    broker.close()
    log.info("worker_stopped")
