"""Every file test runs on both storage backends: the local folder and S3 (moto's
server, a separate process). The files live in a folder or bucket of the test's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.config import Settings
from tests.conftest import SettingsFactory
from tests.fixtures import s3


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
