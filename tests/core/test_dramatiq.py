"""Jobs on Dramatiq and Redis: backoff, the dead-letter queue, time limits, after-commit.

A real Dramatiq worker runs in threads of the test process (so the test can define its
own failing jobs), against the real Redis of KEEL_TEST_REDIS_URL.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import pytest
import redis
from fastapi import FastAPI
from sqlalchemy import text

from keel.auth.jobs import send_password_changed
from keel.config import Settings
from keel.core.jobs import Job, JobContext, JobOutcomes, enqueue_after_commit, job
from keel.core.jobs.redis_queue import DramatiqQueue, create_broker, dead_letter_key
from keel.core.jobs.worker import build_worker_broker, start_worker
from keel.core.logging import configure_logging
from keel.core.metrics import Metrics
from keel.main import create_app
from tests.conftest import SettingsFactory
from tests.support.apps import client_for

pytestmark = pytest.mark.anyio

SECRET = "dl-s3cr3t-t0ken"


def jobs_total(metrics: Metrics, name: str, outcome: str) -> float:
    assert metrics.registry is not None
    labels = {"job": name, "outcome": outcome}
    return metrics.registry.get_sample_value("keel_jobs_total", labels) or 0.0


@contextlib.contextmanager
def running_worker(
    settings: Settings, jobs: Sequence[Job[Any]], metrics: Metrics
) -> Iterator[DramatiqQueue]:
    broker, queue = build_worker_broker(settings, jobs, [], metrics)
    worker = start_worker(broker, threads=2, poll_ms=100)
    try:
        yield queue
    finally:
        worker.stop(timeout=5000)
        broker.close()


async def wait_until(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting")
        await anyio.sleep(0.05)


@pytest.fixture
def dramatiq_settings(make_settings: SettingsFactory, requires_redis: str) -> Iterator[Settings]:
    settings = make_settings(jobs={"backend": "dramatiq"})
    configure_logging(settings)  # as `keel worker` does, onto this test's output
    yield settings
    client = redis.Redis.from_url(requires_redis)
    keys = list(client.scan_iter(match=f"{settings.redis.key_prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


async def test_a_failing_job_backs_off_then_lands_in_the_dead_letter_queue(
    dramatiq_settings: Settings,
    migrated_database: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    started: list[float] = []
    lock = threading.Lock()

    @job("test.always_fails", max_retries=3, min_backoff_ms=100, max_backoff_ms=10_000)
    async def always_fails(ctx: JobContext, token: str) -> None:
        with lock:
            started.append(time.monotonic())
        raise ConnectionError("the peer is down")

    metrics = Metrics()
    with running_worker(dramatiq_settings, [always_fails], metrics) as queue:
        capsys.readouterr()
        await queue.enqueue(always_fails.call(token=SECRET))
        await wait_until(lambda: jobs_total(metrics, "test.always_fails", "failed") == 1)

    assert len(started) == 4  # the first try and three retries
    gaps = [b - a for a, b in itertools.pairwise(started)]
    # Dramatiq's backoff: 100 ms doubled per retry, jitter at most halving it.
    for gap, floor in zip(gaps, (0.1, 0.2, 0.4), strict=True):
        assert gap >= floor, gaps
    assert jobs_total(metrics, "test.always_fails", "retried") == 3

    client = redis.Redis.from_url(str(dramatiq_settings.redis.url))
    dead_ids = client.zrange(dead_letter_key(dramatiq_settings), 0, -1)
    assert len(dead_ids) == 1
    dead_id = dead_ids[0]
    assert isinstance(dead_id, bytes)
    body = client.hget(dead_letter_key(dramatiq_settings) + ".msgs", dead_id)
    assert body is not None
    dead = json.loads(body)
    assert dead["actor_name"] == "test.always_fails"
    assert dead["kwargs"] == {"token": SECRET}  # kept whole, to be inspected or replayed
    client.close()

    out = capsys.readouterr().out
    assert SECRET not in out
    failed = [
        json.loads(line)
        for line in out.splitlines()
        if line.startswith('{"') and "job_failed" in line
    ]
    assert len(failed) == 1
    assert failed[0]["arguments"] == {"token": "[REDACTED]"}


async def test_a_job_over_its_time_limit_is_stopped(
    dramatiq_settings: Settings, migrated_database: str
) -> None:
    finished: list[int] = []

    @job("test.too_slow", max_retries=0, time_limit_ms=300)
    async def too_slow(ctx: JobContext) -> None:
        await anyio.sleep(20)
        finished.append(1)

    metrics = Metrics()
    started = time.monotonic()
    with running_worker(dramatiq_settings, [too_slow], metrics) as queue:
        await queue.enqueue(too_slow.call())
        await wait_until(lambda: jobs_total(metrics, "test.too_slow", "failed") == 1)
    assert time.monotonic() - started < 15
    assert finished == []


async def test_jobs_run_in_the_worker_with_their_context(
    dramatiq_settings: Settings, migrated_database: str
) -> None:
    seen: list[str] = []

    @job("test.reads_database")
    async def reads_database(ctx: JobContext, marker: str) -> None:
        async with ctx.sessionmaker() as session:
            assert (await session.execute(text("select 1"))).scalar_one() == 1
        seen.append(marker)

    metrics = Metrics()
    with running_worker(dramatiq_settings, [reads_database], metrics) as queue:
        await queue.enqueue(reads_database.call(marker="ran"))
        await wait_until(lambda: seen == ["ran"])
        await wait_until(lambda: jobs_total(metrics, "test.reads_database", "succeeded") == 1)


async def test_a_job_enqueued_in_a_rolled_back_transaction_is_never_sent(
    dramatiq_settings: Settings, migrated_database: str
) -> None:
    app: FastAPI = create_app(dramatiq_settings)
    client = redis.Redis.from_url(str(dramatiq_settings.redis.url))
    messages = f"{dramatiq_settings.redis.key_prefix}dramatiq:default.msgs"
    async with client_for(app):
        resources = app.state.resources
        queue = resources.jobs
        assert isinstance(queue, DramatiqQueue)
        unit = resources.database.unit(write=True)
        enqueue_after_commit(unit, queue, send_password_changed.call(email="a@x.test"))
        await unit.rollback()
        assert client.hlen(messages) == 0
        unit = resources.database.unit(write=True)
        enqueue_after_commit(unit, queue, send_password_changed.call(email="b@x.test"))
        await unit.commit()
    stored = [json.loads(body) for body in client.hvals(messages)]
    client.close()
    assert [(m["actor_name"], m["kwargs"]) for m in stored] == [
        ("auth.send_password_changed", {"email": "b@x.test"})
    ]


async def test_an_unreachable_queue_is_logged_and_counted_not_raised(
    make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    # No Redis needed: nothing listens on port 1.
    settings = make_settings(redis={"url": "redis://127.0.0.1:1/0"}, jobs={"backend": "dramatiq"})

    @job("test.unsent")
    async def unsent(ctx: JobContext, token: str) -> None: ...

    configure_logging(settings)
    metrics = Metrics()
    queue = DramatiqQueue(create_broker(settings), [unsent], JobOutcomes(metrics))
    capsys.readouterr()
    await queue.enqueue(unsent.call(token=SECRET))
    await queue.close()
    assert jobs_total(metrics, "test.unsent", "not_enqueued") == 1
    out = capsys.readouterr().out
    assert "job_not_enqueued" in out
    assert SECRET not in out
