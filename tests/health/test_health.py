"""/health, /ready and /metrics as API.md describes them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from keel.config import Settings
from keel.core import migrations
from keel.main import create_app
from tests.conftest import SettingsFactory
from tests.support.apps import client_for

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(create_app(settings)) as client:
        yield client


async def test_health_is_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["content-type"] == "application/json"


async def test_health_needs_no_dependency(make_settings: SettingsFactory, tmp_path: Path) -> None:
    broken = make_settings(database={"url": f"sqlite+aiosqlite:///{tmp_path}/no/such/dir.db"})
    async with serving(broken) as client:
        assert (await client.get("/health")).status_code == 200


async def test_ready_reports_each_check(client: httpx.AsyncClient, redis_url: str | None) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {
            "database": "ok",
            "redis": "ok" if redis_url else "disabled",
            "migrations": "ok",
        },
    }


async def test_ready_names_an_unreachable_database(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings(
        database={"url": f"sqlite+aiosqlite:///{tmp_path}/no/such/dir.db", "pool_timeout": 1}
    )
    async with serving(settings) as client:
        response = await client.get("/ready")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "fail"


async def test_ready_names_an_unreachable_redis(make_settings: SettingsFactory) -> None:
    # Nothing listens on port 1: the connection is refused at once.
    settings = make_settings(redis={"url": "redis://127.0.0.1:1/0"})
    async with serving(settings) as client:
        response = await client.get("/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"] == "fail"
    assert response.json()["checks"]["database"] == "ok"


async def test_ready_says_when_migrations_are_behind(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    resources = app.state.resources
    await migrations.downgrade(resources.engine, resources.settings, "base")
    try:
        response = await client.get("/ready")
        assert response.status_code == 503
        assert response.json()["checks"]["migrations"] == "behind"
    finally:
        await migrations.upgrade(resources.engine, resources.settings)
    assert (await client.get("/ready")).status_code == 200


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def test_metrics_parse_and_count_requests_by_route_template(
    client: httpx.AsyncClient,
) -> None:
    for _ in range(3):
        await client.get("/health")
    await client.get("/no/such/page/42")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    requests = _samples(response.text, "keel_http_requests_total")
    assert requests[(("method", "GET"), ("route", "/health"), ("status", "200"))] == 3
    assert requests[(("method", "GET"), ("route", "<unmatched>"), ("status", "404"))] == 1
    assert not any("/no/such" in value for labels in requests for _, value in labels)
    durations = _samples(response.text, "keel_http_request_duration_seconds_count")
    assert durations[(("method", "GET"), ("route", "/health"), ("status", "200"))] == 3
    families = {family.name for family in text_string_to_metric_families(response.text)}
    assert {
        "keel_http_requests",
        "keel_http_request_duration_seconds",
        "keel_http_requests_in_flight",
        "keel_db_pool_connections",
        "keel_ws_connections",
    } <= families
    # The scrape itself is in flight while it renders.
    assert _samples(response.text, "keel_http_requests_in_flight")[()] == 1


async def test_pool_gauge_tracks_connections(client: httpx.AsyncClient) -> None:
    await client.get("/ready")
    pool = _samples((await client.get("/metrics")).text, "keel_db_pool_connections")
    assert pool[(("state", "in_use"),)] == 0
    assert pool[(("state", "idle"),)] >= 1


async def test_metrics_token_is_required_when_set(make_settings: SettingsFactory) -> None:
    async with serving(make_settings(metrics={"token": "scrape-me"})) as client:
        missing = await client.get("/metrics")
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        right = await client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    for refused in (missing, wrong):
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "UNAUTHORIZED"
        assert refused.headers["www-authenticate"] == "Bearer"
    assert right.status_code == 200


async def test_docs_are_off_in_production(make_settings: SettingsFactory, tmp_path: Path) -> None:
    key_file = tmp_path / "signing.pem"
    key_file.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    settings = make_settings(
        env="production",
        metrics={"token": "t"},
        auth={"signing_key_files": [key_file]},
        secret_key="s" * 40,
    )
    async with serving(settings) as client:
        assert (await client.get("/docs")).status_code == 404
        assert (await client.get("/openapi.json")).status_code == 404
        assert (await client.get("/health")).status_code == 200
