"""Background jobs: define with `@job`, enqueue after the commit, run in-process or on
Dramatiq (`keel worker`). See definition.py for the shape of a job."""

from keel.core.jobs.context import JobContext, open_job_context
from keel.core.jobs.definition import Job, JobCall, Periodic, RetryPolicy, job
from keel.core.jobs.outcomes import JobOutcomes
from keel.core.jobs.queue import JobQueue, enqueue_after_commit

__all__ = [
    "Job",
    "JobCall",
    "JobContext",
    "JobOutcomes",
    "JobQueue",
    "Periodic",
    "RetryPolicy",
    "enqueue_after_commit",
    "job",
    "open_job_context",
]
