"""Every job Keel runs, and the periodic ones: what both runners are built from.

A new job is defined next to its domain (auth/jobs.py) and listed here.
"""

from __future__ import annotations

from typing import Any

from keel.auth import jobs as auth_jobs
from keel.config import Settings
from keel.core.jobs import Job, Periodic
from keel.files import jobs as files_jobs
from keel.idempotency import purge_expired_records


def _purge_interval(settings: Settings) -> float:
    return settings.jobs.purge_interval_seconds


PERIODIC: tuple[Periodic, ...] = (
    *(Periodic(purge, _purge_interval) for purge in (*auth_jobs.PURGE_JOBS, purge_expired_records)),
    files_jobs.SWEEP,
)

JOBS: tuple[Job[Any], ...] = (
    *auth_jobs.JOBS,
    *files_jobs.JOBS,
    *(entry.job for entry in PERIODIC),
)
