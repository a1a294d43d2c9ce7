"""The image's virtual environment, built by running the Dockerfile's builder stage here
(tests/deploy/image.py): the locked runtime dependencies and Keel as a wheel, nothing of
the development tools, and a `keel` that works from it alone."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.deploy.dockerfile import REPO_ROOT, parse
from tests.deploy.image import uv_binary
from tests.support.servers import clean_env

pytestmark = pytest.mark.slow

# Development tools that must never reach the image.
DEV_ONLY = (
    "pytest",
    "pytest-cov",
    "mypy",
    "ruff",
    "moto",
    "hypothesis",
    "granian",
    "py-spy",
    "import-linter",
    "aiosmtpd",
    "authlib",
)


def installed(venv: Path) -> dict[str, str]:
    """Distribution name (normalised) -> version, as the venv's Python sees them."""
    script = (
        "import importlib.metadata as m, json; print(json.dumps("
        "{d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, check=True
    ).stdout
    return {normalise(name): version for name, version in json.loads(out).items()}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return normalise(match[0])


def test_uv_is_the_pinned_version() -> None:
    version = subprocess.run(
        [uv_binary(), "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert f"UV_VERSION={version}" in [
        each.arguments for each in parse().stage("builder").all("ARG")
    ]


def test_runtime_dependencies_in_and_dev_tools_out(image_venv: Path) -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    packages = installed(image_venv)
    for requirement in project["project"]["dependencies"]:
        assert requirement_name(requirement) in packages, requirement
    dev_group = {requirement_name(each) for each in project["dependency-groups"]["dev"]}
    for tool in DEV_ONLY:
        assert tool in dev_group, f"{tool} is no longer a dev dependency: update DEV_ONLY"
        assert tool not in packages, f"{tool} {packages[tool]} is in the image"


def test_keel_is_installed_as_a_wheel_with_its_migrations(image_venv: Path) -> None:
    [site] = (image_venv / "lib").glob("python3.*/site-packages")
    [dist_info] = site.glob("keel-*.dist-info")
    direct = json.loads((dist_info / "direct_url.json").read_text())
    assert direct["dir_info"] == {"editable": False}
    assert not list(site.glob("*keel*.pth")), "an editable install points at the sources"
    assert (site / "keel" / "migrations" / "env.py").is_file()
    assert list((site / "keel" / "migrations" / "versions").glob("*.py"))


def test_keel_runs_from_the_image_venv_alone(image_venv: Path, tmp_path: Path) -> None:
    """`keel db upgrade` finds the packaged migrations, with no checkout beside it."""
    env = clean_env(KEEL_DATA_DIR=str(tmp_path))
    env.pop("PYTHONPATH")  # nothing from the repository
    keel = str(image_venv / "bin" / "keel")
    upgraded = subprocess.run(
        [keel, "db", "upgrade"], check=False, cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert upgraded.returncode == 0, upgraded.stderr
    current = subprocess.run(
        [keel, "db", "current"], check=False, cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert current.returncode == 0, current.stderr
    assert "(up to date)" in current.stdout
    located = subprocess.run(
        [str(image_venv / "bin" / "python"), "-c", "import keel; print(keel.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert Path(located).is_relative_to(image_venv), located
