"""Every failure answers in API.md's error shape, with the request id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from keel.core.errors import NotFound
from keel.main import create_app
from tests.conftest import SettingsFactory
from tests.support import probe_routes
from tests.support.apps import client_for
from tests.support.assertions import assert_error

pytestmark = pytest.mark.anyio


@pytest.fixture
async def probe(app: FastAPI, client: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    app.include_router(probe_routes.router)
    probe_routes.committed_notes.clear()
    async with app.state.resources.engine.begin() as connection:
        await connection.execute(
            text("CREATE TABLE IF NOT EXISTS probe_notes (text VARCHAR(50) NOT NULL)")
        )
        await connection.execute(text("DELETE FROM probe_notes"))
    yield client
    async with app.state.resources.engine.begin() as connection:
        await connection.execute(text("DROP TABLE probe_notes"))


async def stored_notes(app: FastAPI) -> list[str]:
    async with app.state.resources.engine.connect() as connection:
        rows = await connection.execute(text("SELECT text FROM probe_notes"))
        return [row[0] for row in rows]


async def test_unknown_route_is_404(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/api/v1/nothing-here"), 404, "NOT_FOUND")


async def test_wrong_method_is_405_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.delete("/health")
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert "GET" in response.headers["allow"]


async def test_validation_error_lists_each_field(probe: httpx.AsyncClient) -> None:
    response = await probe.post("/probe/notes", json={"text": "", "count": "many", "role": "x"})
    error = assert_error(response, 422, "VALIDATION_ERROR")
    by_loc = {tuple(detail["loc"]): detail for detail in error["details"]}
    assert by_loc[("body", "text")]["type"] == "string_too_short"
    assert by_loc[("body", "count")]["type"] == "int_parsing"
    assert by_loc[("body", "role")]["type"] == "extra_forbidden"
    for detail in error["details"]:
        assert set(detail) == {"loc", "msg", "type"}


async def test_body_that_is_not_json_is_422_json_invalid(probe: httpx.AsyncClient) -> None:
    response = await probe.post(
        "/probe/notes", content=b'{"text": ', headers={"content-type": "application/json"}
    )
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert error["details"][0]["type"] == "json_invalid"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_other_content_type_is_415(probe: httpx.AsyncClient, content_type: str) -> None:
    response = await probe.post(
        "/probe/notes", content=b'{"text": "hi"}', headers={"content-type": content_type}
    )
    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")


async def test_body_without_content_type_is_415(probe: httpx.AsyncClient) -> None:
    request = probe.build_request("POST", "/probe/notes", content=b'{"text": "hi"}')
    assert "content-type" not in request.headers
    assert_error(await probe.send(request), 415, "UNSUPPORTED_MEDIA_TYPE")


async def test_json_with_charset_is_accepted(probe: httpx.AsyncClient) -> None:
    response = await probe.post(
        "/probe/notes",
        content=b'{"text": "hi"}',
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 201


async def test_json_body_over_one_mib_is_413(probe: httpx.AsyncClient) -> None:
    body = b'{"text": "' + b"a" * (1024 * 1024) + b'"}'
    response = await probe.post(
        "/probe/notes", content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


async def test_chunked_json_body_over_one_mib_is_413(probe: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"text": "'
        for _ in range(17):
            yield b"a" * 65536
        yield b'"}'

    response = await probe.post(
        "/probe/notes", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


async def test_body_just_under_the_limit_reaches_validation(probe: httpx.AsyncClient) -> None:
    body = b'{"text": "' + b"a" * (1024 * 1024 - 20) + b'"}'
    response = await probe.post(
        "/probe/notes", content=body, headers={"content-type": "application/json"}
    )
    # Read whole, then refused by the model (max 50 characters), not by size.
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert error["details"][0]["type"] == "string_too_long"


async def test_domain_error_renders_its_status_and_code(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    @app.get("/probe/missing")
    async def missing() -> None:
        raise NotFound("Item not found")

    error = assert_error(await client.get("/probe/missing"), 404, "NOT_FOUND")
    assert error["message"] == "Item not found"


async def test_unexpected_exception_is_500_without_internals(
    app: FastAPI, capsys: pytest.CaptureFixture[str]
) -> None:
    app.include_router(probe_routes.router)
    async with client_for(app, raise_app_exceptions=False) as client:
        response = await client.get("/probe/crash", headers={"X-Request-ID": "crash-1"})
    error = assert_error(response, 500, "INTERNAL_ERROR")
    assert error["request_id"] == "crash-1"
    for leaked in ("secret", "/srv", "password", "Traceback", "RuntimeError"):
        assert leaked not in response.text
    logged = capsys.readouterr().out
    assert "RuntimeError" in logged
    assert "crash-1" in logged
    assert "hunter2" not in logged


async def test_database_down_is_503_with_retry_after(
    make_settings: SettingsFactory, tmp_path: Any
) -> None:
    unreachable = (
        "postgresql+asyncpg://postgres@127.0.0.1:1/keel"
        if "postgresql" in make_settings().database_url
        else f"sqlite+aiosqlite:///{tmp_path}/missing-folder/keel.db"
    )
    app = create_app(make_settings(database={"url": unreachable, "pool_timeout": 1}))
    app.include_router(probe_routes.router)
    async with client_for(app) as client:
        response = await client.get("/probe/two-statements")
    assert_error(response, 503, "SERVICE_UNAVAILABLE")
    assert response.headers["retry-after"].isdigit()
    assert "127.0.0.1" not in response.text
    assert "missing-folder" not in response.text


async def test_session_commits_when_the_endpoint_returns(
    app: FastAPI, probe: httpx.AsyncClient
) -> None:
    response = await probe.post("/probe/notes", json={"text": "kept"})
    assert response.status_code == 201
    assert await stored_notes(app) == ["kept"]
    assert probe_routes.committed_notes == ["kept"]


async def test_session_rolls_back_when_the_endpoint_raises(
    app: FastAPI, probe: httpx.AsyncClient
) -> None:
    response = await probe.post("/probe/notes", json={"text": "conflict"})
    assert_error(response, 409, "CONFLICT")
    assert await stored_notes(app) == []
    assert probe_routes.committed_notes == []


async def test_statement_counter_counts_each_statement(
    app: FastAPI, probe: httpx.AsyncClient, count_queries: Any
) -> None:
    count_queries.reset()
    response = await probe.get("/probe/two-statements")
    assert response.json() == {"sum": 3}
    assert count_queries.count == 2


async def test_a_write_runs_in_a_transaction_unless_declared_one_statement(
    probe: httpx.AsyncClient,
) -> None:
    # A write's statements are wrapped in BEGIN ... COMMIT; a route declared
    # `single_statement` runs its one statement on its own, as reads do.
    assert (await probe.post("/probe/several-statements")).json() == {"transaction": True}
    assert (await probe.post("/probe/one-statement")).json() == {"transaction": False}
    assert (await probe.get("/probe/read")).json() == {"transaction": False}
