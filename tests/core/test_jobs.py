"""The in-process job runner: retries with backoff, time limits, outcomes, after-commit."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel.core.jobs import JobContext, JobOutcomes, Periodic, RetryPolicy, enqueue_after_commit, job
from keel.core.jobs.inprocess import InProcessRunner
from keel.core.jobs.schedule import run_schedule
from keel.core.metrics import Metrics
from keel.resources import Resources
from tests.conftest import SettingsFactory

pytestmark = pytest.mark.anyio

SECRET = "s3cr3t-t0ken-value"


def jobs_total(metrics: Metrics, name: str, outcome: str) -> float:
    assert metrics.registry is not None
    value = metrics.registry.get_sample_value("keel_jobs_total", {"job": name, "outcome": outcome})
    return value or 0.0


def log_records(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


class Attempts:
    """A job that fails its first `failures` tries, noting when each try started."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.started: list[float] = []

    async def __call__(self, ctx: JobContext, token: str) -> None:
        self.started.append(time.monotonic())
        if len(self.started) <= self.failures:
            raise ConnectionError(f"try {len(self.started)} failed")


def runner_of(app: FastAPI) -> InProcessRunner:
    runner = app.state.resources.jobs
    assert isinstance(runner, InProcessRunner)
    return runner


async def test_a_failing_job_is_retried_with_growing_backoff(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    attempts = Attempts(failures=3)
    flaky = job("test.flaky", max_retries=5, min_backoff_ms=40)(attempts)
    runner = runner_of(app)
    await runner.enqueue(flaky.call(token=SECRET))
    await runner.join()

    assert len(attempts.started) == 4  # three failures, then success
    gaps = [b - a for a, b in zip(attempts.started, attempts.started[1:], strict=False)]
    # Backoff doubles from 40 ms with jitter in the upper half: at least 20, 40, 80 ms.
    for gap, floor in zip(gaps, (0.020, 0.040, 0.080), strict=True):
        assert gap >= floor, gaps
    metrics = app.state.resources.metrics
    assert jobs_total(metrics, "test.flaky", "retried") == 3
    assert jobs_total(metrics, "test.flaky", "succeeded") == 1
    assert jobs_total(metrics, "test.flaky", "failed") == 0


async def test_a_job_failing_for_good_is_logged_with_redacted_arguments(
    app: FastAPI, client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    attempts = Attempts(failures=100)
    doomed = job("test.doomed", max_retries=2, min_backoff_ms=1)(attempts)
    runner = runner_of(app)
    capsys.readouterr()
    await runner.enqueue(doomed.call(token=SECRET))
    await runner.join()

    assert len(attempts.started) == 3  # the first try and two retries
    out = capsys.readouterr().out
    assert SECRET not in out
    failed = [r for r in log_records(out) if r.get("event") == "job_failed"]
    assert len(failed) == 1
    assert failed[0]["job"] == "test.doomed"
    assert failed[0]["attempts"] == 3
    assert failed[0]["arguments"] == {"token": "[REDACTED]"}
    assert failed[0]["level"] == "error"
    assert "ConnectionError" in json.dumps(failed[0])
    metrics = app.state.resources.metrics
    assert jobs_total(metrics, "test.doomed", "retried") == 2
    assert jobs_total(metrics, "test.doomed", "failed") == 1


async def test_a_try_over_its_time_limit_is_cut_and_retried(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    tries: list[int] = []

    async def slow_then_quick(ctx: JobContext) -> None:
        tries.append(1)
        if len(tries) == 1:
            await asyncio.sleep(30)

    limited = job("test.slow", max_retries=1, min_backoff_ms=1, time_limit_ms=50)(slow_then_quick)
    runner = runner_of(app)
    started = time.monotonic()
    await runner.enqueue(limited.call())
    await runner.join()
    assert len(tries) == 2
    assert time.monotonic() - started < 10
    metrics = app.state.resources.metrics
    assert jobs_total(metrics, "test.slow", "retried") == 1
    assert jobs_total(metrics, "test.slow", "succeeded") == 1


async def test_a_job_enqueued_in_a_rolled_back_transaction_never_runs(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    ran: list[str] = []

    async def note(ctx: JobContext, what: str) -> None:
        ran.append(what)

    noted = job("test.note")(note)
    resources: Resources = app.state.resources
    unit = resources.database.unit(write=True)
    enqueue_after_commit(unit, resources.jobs, noted.call(what="rolled back"))
    await unit.rollback()
    unit = resources.database.unit(write=True)
    enqueue_after_commit(unit, resources.jobs, noted.call(what="committed"))
    assert ran == []  # not before the commit either
    await unit.commit()
    await runner_of(app).join()
    assert ran == ["committed"]


async def test_a_failed_request_sends_no_email(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Any
) -> None:
    # The verification token is flushed, then the endpoint fails: the transaction rolls
    # back, and so does the e-mail it asked for.
    response = await client.post(
        "/api/v1/auth/register", json={"email": "x@example.com", "password": "short"}
    )
    assert response.status_code == 422
    assert mailbox.sent == []


async def test_jobs_still_waiting_at_shutdown_are_abandoned_and_logged(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings()
    ran: list[int] = []

    async def forever(ctx: JobContext) -> None:
        ran.append(1)
        await asyncio.sleep(60)

    metrics = Metrics()
    context = JobContext(settings, None, None)  # type: ignore[arg-type]
    runner = InProcessRunner(context, JobOutcomes(metrics), concurrency=2, shutdown_timeout=0.05)
    capsys.readouterr()
    await runner.enqueue(job("test.forever")(forever).call())
    await asyncio.sleep(0.01)
    await runner.close()
    assert ran == [1]
    assert "jobs_abandoned" in capsys.readouterr().out
    # Closed: a new job is refused and counted, not silently dropped.
    await runner.enqueue(job("test.late")(forever).call())
    assert ran == [1]
    assert jobs_total(metrics, "test.late", "not_enqueued") == 1


async def test_concurrency_is_bounded(make_settings: SettingsFactory) -> None:
    running = 0
    peak = 0

    async def busy(ctx: JobContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1

    context = JobContext(make_settings(), None, None)  # type: ignore[arg-type]
    runner = InProcessRunner(context, JobOutcomes(Metrics()), concurrency=3, shutdown_timeout=1)
    busy_job = job("test.busy")(busy)
    for _ in range(12):
        await runner.enqueue(busy_job.call())
    await runner.join()
    assert peak == 3
    await runner.close()


async def test_the_schedule_enqueues_once_per_slot_it_claims(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    enqueued: list[str] = []
    claims: list[int] = []

    async def purge(ctx: JobContext) -> None:
        raise AssertionError("the schedule enqueues, it does not run")

    async def enqueue(call: Any) -> None:
        enqueued.append(call.name)

    async def every_other_slot(name: str, slot: int, interval: float) -> bool:
        claims.append(slot)
        return len(claims) % 2 == 1

    periodic = [Periodic(job("test.purge")(purge), lambda _settings: 0.05)]
    task = asyncio.create_task(run_schedule(periodic, settings, enqueue, every_other_slot))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(claims) >= 4
    assert claims == sorted(set(claims))  # one claim per slot, in order
    assert len(enqueued) == (len(claims) + 1) // 2


def test_backoff_doubles_and_is_capped() -> None:
    policy = RetryPolicy(max_retries=10, min_backoff_ms=100, max_backoff_ms=1000)
    for retries, ceiling in [(0, 100), (1, 200), (2, 400), (3, 800), (4, 1000), (9, 1000)]:
        for _ in range(20):
            assert ceiling / 2 <= policy.backoff_ms(retries) <= ceiling
