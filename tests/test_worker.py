"""A real `keel worker` process: it starts, serves its metrics, and stops cleanly."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keel.auth.jobs import purge_expired_tokens
from keel.core.jobs.redis_queue import DramatiqQueue
from keel.main import create_app
from tests.conftest import SettingsFactory
from tests.support.apps import client_for
from tests.support.servers import HOST, clean_env, free_port, wait_for_exit, work

pytestmark = pytest.mark.anyio


async def scrape(port: int) -> dict[tuple[str, str], float]:
    """keel_jobs_total by (job, outcome) from the worker's metrics port."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://{HOST}:{port}/metrics")).text
    return {
        (sample.labels["job"], sample.labels["outcome"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "keel_jobs_total"
    }


async def test_worker_runs_jobs_reports_them_and_stops_on_sigterm(
    make_settings: SettingsFactory, requires_redis: str, migrated_database: str, tmp_path: Path
) -> None:
    settings = make_settings(jobs={"backend": "dramatiq"})
    metrics_port = free_port()
    env = clean_env(
        KEEL_DATA_DIR=str(tmp_path),
        KEEL_DATABASE_URL=settings.database_url,
        KEEL_REDIS_URL=requires_redis,
        KEEL_REDIS_KEY_PREFIX=settings.redis.key_prefix,
        KEEL_LOG_FORMAT="json",
        KEEL_JOBS_WORKER_METRICS_PORT=str(metrics_port),
    )
    with work(tmp_path, env, "--threads", "2") as worker:
        app = create_app(settings)
        async with client_for(app):
            queue = app.state.resources.jobs
            assert isinstance(queue, DramatiqQueue)
            await queue.enqueue(purge_expired_tokens.call())

        deadline = time.monotonic() + 30
        key = ("auth.purge_expired_tokens", "succeeded")
        while True:
            try:
                if (await scrape(metrics_port)).get(key) == 1:
                    break
            except httpx.ConnectError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the job did not run:\n{worker.output()}")
            await anyio.sleep(0.1)

        worker.process.send_signal(signal.SIGTERM)
        assert await wait_for_exit(worker.process, 20) == 0, worker.output()
        events = worker.log_events()
        assert events.index("worker_started") < events.index("tokens_purged")
        assert events[-1] == "worker_stopped"
