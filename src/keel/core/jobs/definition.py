"""What a job is: a named async function, its retry policy, and a call to it.

    @job("auth.send_verification_email", max_retries=5)
    async def send_verification_email(ctx: JobContext, email: str, token: str) -> None: ...

    enqueue_after_commit(session, jobs, send_verification_email.call(email=e, token=t))

A job's arguments travel through the queue as JSON, so they are plain values (strings,
numbers, lists, dicts); its first parameter is the `JobContext` the runner gives it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec

if TYPE_CHECKING:
    from keel.config import Settings
    from keel.core.jobs.context import JobContext

P = ParamSpec("P")

JobFunction = Callable[Concatenate["JobContext", P], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: min_backoff doubled per failure, capped, with jitter."""

    max_retries: int = 5
    min_backoff_ms: int = 1_000
    max_backoff_ms: int = 5 * 60_000
    time_limit_ms: int = 5 * 60_000

    def backoff_ms(self, retries_so_far: int) -> int:
        """Delay before the next try, after `retries_so_far` retries (0 for the first)."""
        ceiling = min(self.max_backoff_ms, self.min_backoff_ms * 2**retries_so_far)
        # Jitter in the upper half: failures of many jobs at once do not retry in step.
        return int(random.uniform(ceiling / 2, ceiling))  # noqa: S311 - not for secrets


@dataclass(frozen=True, slots=True)
class Job(Generic[P]):
    name: str
    fn: JobFunction[P]
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    queue: str = "default"

    def call(self, *args: P.args, **kwargs: P.kwargs) -> JobCall:
        """This job with these arguments, ready to enqueue."""
        return JobCall(self, args, kwargs)


@dataclass(frozen=True, slots=True)
class JobCall:
    job: Job[Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    @property
    def name(self) -> str:
        return self.job.name


def job(
    name: str,
    *,
    max_retries: int = 5,
    min_backoff_ms: int = 1_000,
    max_backoff_ms: int = 5 * 60_000,
    time_limit_ms: int = 5 * 60_000,
    queue: str = "default",
) -> Callable[[JobFunction[P]], Job[P]]:
    """Declare a job. Defining it starts nothing: runners are built from a list of jobs."""
    policy = RetryPolicy(max_retries, min_backoff_ms, max_backoff_ms, time_limit_ms)

    def define(fn: JobFunction[P]) -> Job[P]:
        return Job(name=name, fn=fn, retry=policy, queue=queue)

    return define


@dataclass(frozen=True, slots=True)
class Periodic:
    """Run `job` (which takes no arguments) every `interval(settings)` seconds."""

    job: Job[[]]
    interval: Callable[[Settings], float]
