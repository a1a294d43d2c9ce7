"""Real `keel serve` processes: graceful shutdown, metrics across workers, refusals, defaults.

Each test runs the command as a subprocess on a free port of 127.0.0.1, bounds every wait,
and in a `finally` stops the process and kills whatever is left of its process group
(worker processes included).

The servers run in the test's temporary folder, not in the repository: the settings read
`.env` from the working directory, and a developer's `.env` must not leak into a test (the
repository root is put on PYTHONPATH so `tests.support.slow_app` imports).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from keel.core.metrics import MULTIPROC_ENV
from tests.fixtures import databases
from tests.support.servers import (
    Server,
    clean_env,
    connection_refused,
    request_counts_by_worker,
    run_to_exit,
    serve,
    wait_for_exit,
    wait_until_healthy,
    wait_until_refused,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SLOW_FACTORY = "tests.support.slow_app:create"
HEALTH_LABELS = {"method": "GET", "route": "/health", "status": "200"}

# Uvicorn ends a graceful shutdown by raising SIGTERM again; `keel serve` turns that into
# exit status 0, after the in-flight requests and the lifespan shutdown have completed.
# Anything else (1, killed by a signal, no exit) fails.
EXIT_AFTER_GRACEFUL_SIGTERM = 0


async def send_health_requests(url: str, count: int, concurrency: int = 8) -> int:
    """`count` GET /health, each on a new connection; all must answer 200."""
    statuses: list[int] = []
    limiter = anyio.CapacityLimiter(concurrency)
    async with httpx.AsyncClient(
        base_url=url,
        timeout=10,
        limits=httpx.Limits(max_keepalive_connections=0),
        headers={"Connection": "close"},
    ) as client:

        async def one() -> None:
            async with limiter:
                statuses.append((await client.get("/health")).status_code)

        async with anyio.create_task_group() as group:
            for _ in range(count):
                group.start_soon(one)
    assert statuses == [200] * count
    return count


async def wait_until_in_flight(client: httpx.AsyncClient, server: Server, requests: int) -> None:
    """Wait until the server reports `requests` in flight, counting this one (summed over
    its workers when it has several)."""
    deadline = time.monotonic() + 5
    while True:
        response = await client.get("/metrics", headers=server.metrics_headers)
        assert response.status_code == 200, response.text
        in_flight = sample_value(
            list(text_string_to_metric_families(response.text)), "keel_http_requests_in_flight"
        )
        if in_flight >= requests:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{in_flight} requests in flight, expected {requests}")
        await anyio.sleep(0.02)


# --- metrics -------------------------------------------------------------------------


def sample_value(families: list[Metric], name: str, labels: dict[str, str] | None = None) -> float:
    values = [
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == name and sample.labels == (labels or {})
    ]
    assert len(values) == 1, f"{name}{labels or ''}: {values}"
    return values[0]


def health_counts_by_worker(metrics_dir: Path, scratch: Path) -> dict[int, float]:
    """GET /health 200 counts in each process's own counter file (counter_<pid>.db)."""
    return request_counts_by_worker(metrics_dir, scratch, HEALTH_LABELS)


async def wait_for_recorded(metrics_dir: Path, scratch: Path, total: int) -> dict[int, float]:
    """Per-worker counts once they add up to `total` (a worker counts just after answering)."""
    deadline = time.monotonic() + 3
    counts = health_counts_by_worker(metrics_dir, scratch)
    while sum(counts.values()) < total and time.monotonic() < deadline:
        await anyio.sleep(0.05)
        counts = health_counts_by_worker(metrics_dir, scratch)
    return counts


# --- tests ---------------------------------------------------------------------------


async def test_request_in_flight_when_sigterm_arrives_completes(
    migrated_database: str, tmp_path: Path
) -> None:
    env = clean_env(
        KEEL_DATA_DIR=str(tmp_path / "data"),
        KEEL_DATABASE_URL=migrated_database,
        KEEL_LOG_FORMAT="json",
    )
    with serve(tmp_path, env, "--factory", SLOW_FACTORY) as server:
        await wait_until_healthy(server)
        outcome: list[httpx.Response] = []
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:

            async def slow_request() -> None:
                outcome.append(await client.get("/slow", params={"seconds": 2}))

            async with anyio.create_task_group() as group:
                group.start_soon(slow_request)
                await wait_until_in_flight(client, server, requests=2)  # /slow and this /metrics
                server.process.send_signal(signal.SIGTERM)
                # The listener closes at once: new connections are refused while the
                # request already in flight is still being answered.
                await wait_until_refused(server.port, timeout=1.0)
                assert not outcome, "/slow ended before the listener closed"

        [response] = outcome
        assert response.status_code == 200, response.text
        assert response.json() == {"done": True}
        code = await wait_for_exit(server.process, timeout=5)
        assert code == EXIT_AFTER_GRACEFUL_SIGTERM, server.output()
        assert connection_refused(server.port)
        # The lifespan shutdown ran after the request: database and broker closed.
        events = server.log_events()
        assert "resources_closed" in events, server.output()


async def test_sigterm_grace_period_is_bounded(migrated_database: str, tmp_path: Path) -> None:
    env = clean_env(
        KEEL_DATA_DIR=str(tmp_path / "data"),
        KEEL_DATABASE_URL=migrated_database,
        KEEL_LOG_FORMAT="json",
        KEEL_SERVER_GRACEFUL_TIMEOUT="1",
    )
    with serve(tmp_path, env, "--factory", SLOW_FACTORY) as server:
        await wait_until_healthy(server)
        outcome: list[httpx.Response] = []
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:

            async def slow_request() -> None:
                outcome.append(await client.get("/slow", params={"seconds": 30}))

            async with anyio.create_task_group() as group:
                group.start_soon(slow_request)
                await wait_until_in_flight(client, server, requests=2)
                server.process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                code = await wait_for_exit(server.process, timeout=5)
                stopped_after = time.monotonic() - signalled
                if code is None:  # fail on the exit below, not on the client's timeout
                    group.cancel_scope.cancel()

        assert code == EXIT_AFTER_GRACEFUL_SIGTERM, server.output()
        # It waited out the 1 s grace period, then cut the request short.
        assert 1.0 <= stopped_after < 5, stopped_after
        # Uvicorn cancels the request's task; the response had not started, so the
        # client is answered 500 rather than left waiting for 30 s.
        [response] = outcome
        assert response.status_code == 500, response.text
        assert "resources_closed" in server.log_events(), server.output()


async def test_metrics_add_up_across_two_workers(
    requires_redis: str, redis_prefix: str, migrated_database: str, tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = clean_env(
        KEEL_DATA_DIR=str(tmp_path / "data"),
        KEEL_DATABASE_URL=migrated_database,
        KEEL_REDIS_URL=requires_redis,
        KEEL_REDIS_KEY_PREFIX=redis_prefix,
        **{MULTIPROC_ENV: str(metrics_dir)},
    )
    try:
        with serve(tmp_path, env, "--workers", "2") as server:
            sent = await wait_until_healthy(server)
            counts: dict[int, float] = {}
            for _attempt in range(5):  # the kernel picks the worker: retry if one got all
                sent += await send_health_requests(server.url, 200)
                counts = await wait_for_recorded(metrics_dir, tmp_path / "scratch", sent)
                if sum(1 for count in counts.values() if count > 0) >= 2:
                    break

            # Both workers answered /health, each recorded in its own file.
            assert sum(1 for count in counts.values() if count > 0) >= 2, counts
            assert sum(counts.values()) == sent, counts

            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                response = await client.get("/metrics", headers=server.metrics_headers)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("text/plain")
            families = list(text_string_to_metric_families(response.text))
            types = {family.name: family.type for family in families}
            assert types["keel_http_requests"] == "counter"
            assert types["keel_http_request_duration_seconds"] == "histogram"

            # /metrics adds up every worker's samples.
            assert sample_value(families, "keel_http_requests_total", HEALTH_LABELS) == sent
            assert (
                sample_value(families, "keel_http_request_duration_seconds_count", HEALTH_LABELS)
                == sent
            )
            inf_bucket = {**HEALTH_LABELS, "le": "+Inf"}
            assert (
                sample_value(families, "keel_http_request_duration_seconds_bucket", inf_bucket)
                == sent
            )
    finally:
        await databases.delete_keys(requires_redis, redis_prefix)


def test_several_workers_need_redis(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    code, _stdout, stderr = run_to_exit(
        tmp_path, clean_env(KEEL_DATA_DIR=str(data_dir)), "--workers", "2"
    )
    assert code != 0
    assert "KEEL_REDIS_URL" in stderr
    # Refused before anything was touched: the embedded database was not even created.
    assert not (data_dir / "keel.db").exists()


def test_production_refuses_unsafe_settings_one_line_each(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = clean_env(
        KEEL_DATA_DIR=str(data_dir),
        KEEL_ENV="production",
        KEEL_CORS_ORIGINS='["*"]',
        KEEL_CORS_ALLOW_CREDENTIALS="true",
    )
    code, _stdout, stderr = run_to_exit(tmp_path, env)
    assert code != 0
    lines = stderr.splitlines()
    problem_lines: set[int] = set()
    for name in ("KEEL_CORS_ORIGINS", "KEEL_AUTH_SIGNING_KEY_FILES", "KEEL_METRICS_TOKEN"):
        matching = [number for number, line in enumerate(lines) if name in line]
        assert len(matching) == 1, f"{name} on lines {matching}:\n{stderr}"
        assert lines[matching[0]].startswith("error: "), lines[matching[0]]
        problem_lines.update(matching)
    assert len(problem_lines) == 3, stderr  # one line per problem, not one for all
    assert not (data_dir / "keel.db").exists()


async def test_embedded_default_creates_and_migrates_its_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"  # does not exist yet
    # The development default itself (docs on, SQLite, one process): never production's.
    with serve(tmp_path, clean_env(KEEL_DATA_DIR=str(data_dir)), as_given=True) as server:
        await wait_until_healthy(server)
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            ready = await client.get("/ready")
            docs = await client.get("/docs")
            schema = await client.get("/openapi.json")

    assert (data_dir / "keel.db").is_file()
    assert ready.status_code == 200, ready.text
    assert ready.json() == {
        "status": "ok",
        "checks": {"database": "ok", "redis": "disabled", "migrations": "ok"},
    }
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert schema.status_code == 200
    body: dict[str, Any] = schema.json()
    assert "/ready" in body["paths"]
