"""deploy/Dockerfile, read as a file: no Docker engine runs here, so what can be checked
without building the image is checked on its text (the build steps themselves run in
test_image_build.py). hadolint, when installed, finds nothing (deploy/README.md)."""

from __future__ import annotations

import ast
import re

import pytest

from tests.deploy.dockerfile import (
    REPO_ROOT,
    Dockerfile,
    copy_sources,
    dockerignore_patterns,
    exec_form,
    healthcheck_options,
    ignored,
    parse,
)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse()


def pinned_uv_version() -> str:
    """run.py's UV_VERSION: the uv every machine uses."""
    tree = ast.parse((REPO_ROOT / "run.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "UV_VERSION" for target in node.targets
        ):
            assert isinstance(node.value, ast.Constant)
            return str(node.value.value)
    raise AssertionError("run.py has no UV_VERSION")


def test_two_stages_on_the_same_slim_python(dockerfile: Dockerfile) -> None:
    assert [stage.name for stage in dockerfile.stages] == ["builder", "runtime"]
    bases = {stage.base for stage in dockerfile.stages}
    # One base for both: the venv's interpreter path is the same in both stages.
    assert len(bases) == 1, bases
    [base] = bases
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base


def test_the_builder_uses_run_pys_uv(dockerfile: Dockerfile) -> None:
    builder = dockerfile.stage("builder")
    [uv_arg] = [each for each in builder.all("ARG") if each.arguments.startswith("UV_VERSION=")]
    assert uv_arg.arguments == f"UV_VERSION={pinned_uv_version()}"
    installs = [each.arguments for each in builder.all("RUN") if "pip install" in each.arguments]
    assert installs == ['pip install --no-cache-dir "uv==${UV_VERSION}"']


def test_the_builder_installs_the_lock_without_dev_dependencies(dockerfile: Dockerfile) -> None:
    builder = dockerfile.stage("builder")
    syncs = [each.arguments for each in builder.all("RUN") if each.arguments.startswith("uv ")]
    assert syncs == [
        "uv sync --frozen --no-dev --no-install-project",
        "uv sync --frozen --no-dev --no-editable",
    ]
    env = builder.env()
    assert env["UV_PROJECT_ENVIRONMENT"] == "/app/.venv"
    assert env["UV_PYTHON_DOWNLOADS"] == "never"  # the image's Python, not a download


def test_every_copied_source_exists_and_is_in_the_build_context(dockerfile: Dockerfile) -> None:
    patterns = dockerignore_patterns()
    sources = [
        source
        for stage in dockerfile.stages
        for instruction in stage.all("COPY")
        for flags, paths, _ in [copy_sources(instruction)]
        if "from" not in flags
        for source in paths
    ]
    assert sources, "nothing copied from the build context"
    for source in sources:
        assert (REPO_ROOT / source).exists(), source
        assert not ignored(source, patterns), f"{source} is excluded by .dockerignore"
    # Every file the wheel is built from goes in, and what must not travel stays out.
    for path in ("src/keel/main.py", "migrations/env.py"):
        assert not ignored(path, patterns), path
    for path in (".venv/bin/python", ".env", "data/keel.db", "tests/conftest.py", ".git/HEAD"):
        assert ignored(path, patterns), path
    assert ignored("src/keel/__pycache__/main.cpython-311.pyc", patterns)


def test_the_runtime_stage_carries_only_the_venv(dockerfile: Dockerfile) -> None:
    runtime = dockerfile.stage("runtime")
    copies = [copy_sources(instruction) for instruction in runtime.all("COPY")]
    assert copies == [({"from": "builder"}, ["/app/.venv"], "/app/.venv")]
    assert not any("uv" in each.arguments.split() for each in runtime.all("RUN"))


def test_the_service_runs_as_an_unprivileged_user(dockerfile: Dockerfile) -> None:
    runtime = dockerfile.stage("runtime")
    user = runtime.one("USER").arguments
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), user
    assert int(uid) != 0
    assert gid.isdigit()
    assert int(gid) != 0
    # The user is created with exactly these ids, and owns the data folder only.
    [setup] = runtime.all("RUN")
    assert f"--uid {uid}" in setup.arguments
    assert f"--gid {gid}" in setup.arguments
    assert "chown keel:keel /app/data" in setup.arguments
    # USER comes after everything that needs root, and before the command.
    keywords = [each.keyword for each in runtime.instructions]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k in {"RUN", "COPY"})


def test_production_settings_and_the_venv_on_the_path(dockerfile: Dockerfile) -> None:
    env = dockerfile.stage("runtime").env()
    assert env["KEEL_ENV"] == "production"
    assert env["PATH"].startswith("/app/.venv/bin:")
    assert env["KEEL_DATA_DIR"] == "/app/data"
    assert int(env["KEEL_SERVER_WORKERS"]) > 1


def test_the_command_is_keel_serve_on_every_interface(dockerfile: Dockerfile) -> None:
    runtime = dockerfile.stage("runtime")
    # In a container, every interface: the container's network is the boundary.
    all_interfaces = "0.0.0.0"  # noqa: S104
    assert exec_form(runtime.one("CMD")) == ["keel", "serve", "--host", all_interfaces]
    assert runtime.one("STOPSIGNAL").arguments == "SIGTERM"
    assert runtime.one("EXPOSE").arguments == runtime.env()["KEEL_SERVER_PORT"]


def test_the_health_check_asks_health_with_pythons_urllib(dockerfile: Dockerfile) -> None:
    check = dockerfile.stage("runtime").one("HEALTHCHECK")
    command = exec_form(check)
    assert command[:2] == ["python", "-c"]
    ast.parse(command[2])  # valid Python
    assert "urllib.request.urlopen(" in command[2]
    assert "/health" in command[2]
    options = healthcheck_options(check)
    assert set(options) == {"interval", "timeout", "start-period", "retries"}
    # The probe gives up before Docker kills it, so a slow answer fails cleanly.
    probe_timeout = float(re.findall(r"timeout=(\d+)", command[2])[0])
    assert probe_timeout < float(options["timeout"].removesuffix("s"))
