"""How a job ended, said once for both runners: a log line and `keel_jobs_total`.

Outcomes: `succeeded`, `retried` (failed, will run again), `failed` (failed for good:
logged with its arguments, which the log redacts like any other value) and
`not_enqueued` (the queue could not take it, e.g. Redis was down after the commit).
"""

from __future__ import annotations

from typing import Any

import structlog

from keel.core.metrics import Metrics

log = structlog.get_logger("keel.jobs")


class JobOutcomes:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def _count(self, job: str, outcome: str) -> None:
        self.metrics.jobs.labels(job, outcome).inc()

    def succeeded(self, job: str, attempt: int, seconds: float) -> None:
        self._count(job, "succeeded")
        log.info("job_succeeded", job=job, attempt=attempt, duration_ms=round(seconds * 1000, 1))

    def retried(self, job: str, attempt: int, error: BaseException, delay_ms: int | None) -> None:
        self._count(job, "retried")
        log.warning(
            "job_retrying",
            job=job,
            attempt=attempt,
            delay_ms=delay_ms,
            error=f"{type(error).__name__}: {error}",
        )

    def failed(
        self,
        job: str,
        attempts: int,
        error: BaseException,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any],
    ) -> None:
        self._count(job, "failed")
        log.error(
            "job_failed",
            job=job,
            attempts=attempts,
            args=list(args),
            arguments=kwargs,
            exc_info=error,
        )

    def not_enqueued(self, job: str, error: BaseException, kwargs: dict[str, Any]) -> None:
        self._count(job, "not_enqueued")
        log.error("job_not_enqueued", job=job, arguments=kwargs, exc_info=error)
