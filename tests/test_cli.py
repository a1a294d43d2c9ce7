"""The keel command: migrations, the schema, and what `serve` checks before it starts."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, Table
from typer.testing import CliRunner

from keel.cli import app
from keel.core import migrations
from keel.core.metrics import MULTIPROC_ENV
from keel.models import Base

runner = CliRunner()


def test_db_commands_walk_the_migration_history(cli_env: Path) -> None:
    before = runner.invoke(app, ["db", "current"])
    assert before.exit_code == 0, before.output
    assert "current: (none)" in before.output
    assert "behind" in before.output

    upgraded = runner.invoke(app, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    assert (cli_env / "keel.db").exists()
    after = runner.invoke(app, ["db", "current"])
    head = migrations.head_revision()
    assert f"current: {head}" in after.output
    assert "up to date" in after.output

    checked = runner.invoke(app, ["db", "check"])
    assert checked.exit_code == 0, checked.output
    assert "agree" in checked.output

    downgraded = runner.invoke(app, ["db", "downgrade", "base"])
    assert downgraded.exit_code == 0, downgraded.output
    assert "current: (none)" in runner.invoke(app, ["db", "current"]).output


def test_db_check_fails_when_models_are_ahead(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    table = Table("unmigrated", Base.metadata, Column("id", Integer, primary_key=True))
    try:
        result = runner.invoke(app, ["db", "check"])
    finally:
        Base.metadata.remove(table)
    assert result.exit_code == 1
    assert "disagree" in result.output


def test_db_revision_writes_a_script(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    versions = cli_env / "migrations" / "versions"
    versions.mkdir(parents=True)
    real = migrations.migrations_dir()
    for name in ("env.py", "script.py.mako"):
        (cli_env / "migrations" / name).write_text((real / name).read_text())
    for script in (real / "versions").glob("*.py"):
        (versions / script.name).write_text(script.read_text())
    monkeypatch.setattr(migrations, "migrations_dir", lambda: cli_env / "migrations")

    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(app, ["db", "revision", "-m", "add widgets"])
    assert result.exit_code == 0, result.output
    written = [path.name for path in versions.glob("*add_widgets.py")]
    assert len(written) == 1


def test_openapi_prints_the_schema(cli_env: Path) -> None:
    result = runner.invoke(app, ["openapi"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    assert schema["info"]["title"] == "Keel"
    assert "/health" in schema["paths"]


def test_serve_refuses_several_workers_on_in_process_backends(cli_env: Path) -> None:
    result = runner.invoke(app, ["serve", "--workers", "2"])
    assert result.exit_code == 2
    assert "KEEL_REDIS_URL" in result.output


def test_serve_refuses_unsafe_production_settings(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEL_ENV", "production")
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert any("KEEL_METRICS_TOKEN" in line for line in lines)
    assert any("KEEL_AUTH_SIGNING_KEY_FILES" in line for line in lines)


def test_serve_migrates_the_embedded_database_then_runs_uvicorn(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)

    def fake_run(target: str, **options: Any) -> None:
        calls.append({"target": target, "metrics_dir": os.environ.get(MULTIPROC_ENV), **options})

    monkeypatch.setattr("keel.cli.supervisor.run_uvicorn", fake_run)
    monkeypatch.setenv("KEEL_SERVER_GRACEFUL_TIMEOUT", "7")
    result = runner.invoke(app, ["serve", "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert f"at revision {migrations.head_revision()}" in result.output
    (call,) = calls
    assert call["target"] == "keel.main:app_factory"
    assert call["factory"] is True
    assert call["port"] == 8123
    assert call["host"] == "127.0.0.1"
    assert call["workers"] == 1
    assert call["timeout_graceful_shutdown"] == 7
    assert call["metrics_dir"] is None  # one process needs no shared metric files


def test_serve_gives_several_workers_a_shared_metrics_folder(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    monkeypatch.setenv(MULTIPROC_ENV, "")
    monkeypatch.delenv(MULTIPROC_ENV)  # recorded, so it is restored to absent afterwards
    monkeypatch.setenv("KEEL_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setattr(
        "keel.cli.supervisor.run_uvicorn", lambda *_a, **_k: seen.append(os.environ[MULTIPROC_ENV])
    )
    result = runner.invoke(app, ["serve", "--workers", "3"])
    assert result.exit_code == 0, result.output
    (folder,) = seen
    assert not Path(folder).exists()  # removed again when the server stops
    assert MULTIPROC_ENV not in os.environ


def test_users_create_admin_from_an_environment_variable(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    monkeypatch.setenv("ADMIN_PW", "a long and uncommon passphrase")
    created = runner.invoke(
        app, ["users", "create", "Root@Example.com", "--admin", "--password-env", "ADMIN_PW"]
    )
    assert created.exit_code == 0, created.output
    assert "Created admin root@example.com" in created.output
    again = runner.invoke(
        app, ["users", "create", "root@example.com", "--password-env", "ADMIN_PW"]
    )
    assert again.exit_code == 2
    assert "already exists" in again.output


def test_users_create_prompts_for_the_password_and_applies_the_policy(cli_env: Path) -> None:
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    weak = runner.invoke(app, ["users", "create", "a@example.com"], input="password\npassword\n")
    assert weak.exit_code == 2
    assert "too common" in weak.output
    good = runner.invoke(
        app,
        ["users", "create", "a@example.com"],
        input="a long and uncommon passphrase\na long and uncommon passphrase\n",
    )
    assert good.exit_code == 0, good.output
    assert "Created user a@example.com" in good.output


def test_users_create_refuses_an_unset_password_variable(cli_env: Path) -> None:
    result = runner.invoke(app, ["users", "create", "a@example.com", "--password-env", "NOPE_X"])
    assert result.exit_code == 2
    assert "NOPE_X" in result.output


def test_worker_needs_redis(cli_env: Path) -> None:
    result = runner.invoke(app, ["worker"])
    assert result.exit_code == 2
    assert "set KEEL_REDIS_URL" in result.output


def test_worker_is_not_needed_with_in_process_jobs(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEL_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("KEEL_JOBS_BACKEND", "inprocess")
    result = runner.invoke(app, ["worker"])
    assert result.exit_code == 2
    assert "no worker needed" in result.output


def test_dramatiq_jobs_without_redis_are_refused(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEL_JOBS_BACKEND", "dramatiq")
    result = runner.invoke(app, ["worker"])
    assert result.exit_code == 2
    assert "KEEL_JOBS_BACKEND=dramatiq needs KEEL_REDIS_URL" in result.output


def test_worker_says_which_setting_frees_a_taken_metrics_port(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # Nothing listens on port 1: the worker must stop at the metrics port, before Redis.
        monkeypatch.setenv("KEEL_REDIS_URL", "redis://127.0.0.1:1/0")
        monkeypatch.setenv("KEEL_JOBS_WORKER_METRICS_PORT", str(port))
        result = runner.invoke(app, ["worker"])
    assert result.exit_code == 2
    assert f"cannot serve worker metrics on 127.0.0.1:{port}" in result.output
    assert "KEEL_JOBS_WORKER_METRICS_PORT" in result.output
