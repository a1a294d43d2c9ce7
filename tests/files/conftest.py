"""Every file test runs on both storage backends: the local folder and S3 (moto's
server, a separate process). The files live in a folder or bucket of the test's own."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel.config import Settings
from keel.main import create_app
from tests.conftest import SettingsFactory, empty_tables
from tests.fixtures import s3
from tests.support.apps import client_for


@pytest.fixture(params=["local", "s3"])
def storage_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage_settings(
    storage_backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> dict[str, object]:
    if storage_backend == "local":
        return {"backend": "local", "local_path": tmp_path / "files"}
    endpoint = request.getfixturevalue("s3_endpoint")
    return {
        "backend": "s3",
        "s3_bucket": s3.new_bucket(endpoint),
        "s3_endpoint_url": endpoint,
        "s3_region": s3.REGION,
    }


@pytest.fixture
def settings(make_settings: SettingsFactory, storage_settings: dict[str, object]) -> Settings:
    return make_settings(storage=storage_settings)


AppWith = Callable[..., AbstractAsyncContextManager[tuple[FastAPI, httpx.AsyncClient]]]


@pytest.fixture
def app_with(
    make_settings: SettingsFactory, storage_settings: dict[str, object], migrated_database: str
) -> AppWith:
    """An app of the test's own, on this backend, with more settings (storage ones as a
    dict); its rows are emptied afterwards, as the `client` fixture's are."""

    @contextlib.asynccontextmanager
    async def started(
        storage: dict[str, object] | None = None, **overrides: Any
    ) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
        settings = make_settings(storage={**storage_settings, **(storage or {})}, **overrides)
        app = create_app(settings)
        async with client_for(app) as client:
            try:
                yield app, client
            finally:
                await empty_tables(app)

    return started
