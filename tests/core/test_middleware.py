"""Request id, Server-Timing, security headers, CORS, compression and the access log."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from keel.main import create_app
from tests.conftest import SettingsFactory
from tests.support.apps import client_for

pytestmark = pytest.mark.anyio


async def test_well_formed_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"X-Request-ID": "abc.DEF-123_x"})
    assert response.headers["x-request-id"] == "abc.DEF-123_x"


@pytest.mark.parametrize("sent", ["has space", "x" * 129, "semi;colon", ""])
async def test_malformed_request_id_is_replaced(client: httpx.AsyncClient, sent: str) -> None:
    response = await client.get("/health", headers={"X-Request-ID": sent})
    replaced = response.headers["x-request-id"]
    assert replaced != sent
    assert len(replaced) == 32
    assert replaced.isalnum()


async def test_request_id_is_made_when_absent_and_unique(client: httpx.AsyncClient) -> None:
    first = (await client.get("/health")).headers["x-request-id"]
    second = (await client.get("/health")).headers["x-request-id"]
    assert first != second


async def test_server_timing_reports_app_duration(client: httpx.AsyncClient) -> None:
    timing = (await client.get("/health")).headers["server-timing"]
    name, duration = timing.split(";dur=")
    assert name == "app"
    assert float(duration) >= 0


async def test_security_headers_on_api_responses(client: httpx.AsyncClient) -> None:
    headers = (await client.get("/health")).headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["content-security-policy"].startswith("default-src 'none'")
    assert "strict-transport-security" not in headers


async def test_security_headers_on_errors_too(client: httpx.AsyncClient) -> None:
    headers = (await client.get("/missing")).headers
    assert headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in headers["content-security-policy"]


async def test_hsts_only_over_https(app: FastAPI) -> None:
    async with client_for(app, base_url="https://testserver") as client:
        headers = (await client.get("/health")).headers
    assert headers["strict-transport-security"].startswith("max-age=31536000")


async def test_docs_page_has_its_own_policy_that_lets_swagger_run(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    assert "script-src https://cdn.jsdelivr.net 'sha256-" in policy
    assert "'unsafe-inline'" not in policy
    assert "swagger-ui-bundle.js" in response.text
    assert (await client.get("/docs/oauth2-redirect")).status_code == 200


@pytest.fixture
async def cors_client(
    make_settings: SettingsFactory, migrated_database: str
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(cors={"origins": ["https://app.example"]}))
    async with client_for(app) as client:
        yield client


async def test_cors_allows_listed_origin(cors_client: httpx.AsyncClient) -> None:
    response = await cors_client.get("/ready", headers={"Origin": "https://app.example"})
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()


async def test_cors_ignores_other_origins(cors_client: httpx.AsyncClient) -> None:
    response = await cors_client.get("/ready", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers


async def test_cors_preflight(cors_client: httpx.AsyncClient) -> None:
    allowed = await cors_client.options(
        "/ready",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Idempotency-Key, Content-Type",
        },
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    refused = await cors_client.options(
        "/ready",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert refused.status_code == 400
    # Issue 12, point 12: in the one error shape, like every other error.
    error = refused.json()["error"]
    assert error["code"] == "BAD_REQUEST"
    assert "origin" in error["message"].lower()
    assert error["request_id"] == refused.headers["x-request-id"]
    assert "access-control-allow-origin" not in refused.headers


async def test_no_cors_headers_by_default(client: httpx.AsyncClient) -> None:
    response = await client.get("/ready", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in response.headers


async def test_large_responses_are_gzipped(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json", headers={"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert response.json()["info"]["title"] == "Keel"


@pytest.mark.parametrize("accept", ["gzip", "identity"])
async def test_answers_vary_by_accept_encoding_compressed_or_not(
    client: httpx.AsyncClient, accept: str
) -> None:
    for path in ("/openapi.json", "/api/v1/nothing-here", "/ready"):
        response = await client.get(path, headers={"Accept-Encoding": accept})
        assert response.headers["vary"].lower().count("accept-encoding") == 1, path


async def test_small_responses_are_not_gzipped(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in response.headers


async def test_one_access_log_line_per_request(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    await client.get(
        "/ready?token=abc123",
        headers={"X-Request-ID": "log-me", "Authorization": "Bearer s3cr3t"},
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    access = [line for line in lines if line["event"] == "request"]
    assert len(access) == 1
    line = access[0]
    assert line["request_id"] == "log-me"
    assert line["method"] == "GET"
    assert line["path"] == "/ready"
    assert line["route"] == "/ready"
    assert line["status"] == 200
    assert line["duration_ms"] >= 0
    assert line["level"] == "info"
    text = json.dumps(lines)
    assert "s3cr3t" not in text
    assert "abc123" not in text


async def test_unmatched_routes_share_one_route_label(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    await client.get("/random/path/12345")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    assert [line["route"] for line in lines if line["event"] == "request"] == ["<unmatched>"]


async def test_health_probes_write_no_access_line_by_default(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    response = await client.get("/health")
    assert response.headers["x-request-id"]
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    assert [line for line in lines if line["event"] == "request"] == []


async def test_health_access_lines_can_be_turned_on(
    make_settings: SettingsFactory, migrated_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(make_settings(log={"access_skip_paths": []}))
    async with client_for(app) as client:
        capsys.readouterr()
        await client.get("/health")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    (access,) = [line for line in lines if line["event"] == "request"]
    assert access["route"] == "/health"
    assert access["status"] == 200


async def test_health_fast_path_answers_head_and_leaves_other_methods_to_routing(
    client: httpx.AsyncClient,
) -> None:
    head = await client.head("/health")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == "15"
    assert head.headers["x-content-type-options"] == "nosniff"
    assert (await client.post("/health")).status_code == 405
