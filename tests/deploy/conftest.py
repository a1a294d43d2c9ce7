"""The image's virtual environment, built once per test run (tests/deploy/image.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.image import build_venv


@pytest.fixture(scope="session")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_venv(tmp_path_factory.mktemp("image"))
