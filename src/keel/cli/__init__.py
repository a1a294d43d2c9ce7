"""The `keel` command: serve, worker, database migrations, the OpenAPI schema (and,
from cli/admin.py, keys, users and files)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from keel.cli.admin import files_app, keys_app, users_app
from keel.cli.common import fail, load_settings, with_engine
from keel.config import (
    Settings,
    UnsafeSettingsError,
    check_settings,
    in_process_backend_problems,
)
from keel.core.metrics import MULTIPROC_ENV

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

app = typer.Typer(
    help="Keel: a production FastAPI backend.", no_args_is_help=True, add_completion=False
)
db_app = typer.Typer(help="Database migrations (Alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(users_app, name="users")
app.add_typer(files_app, name="files")

DEFAULT_FACTORY = "keel.main:app_factory"


def _prepare_multiprocess_metrics(workers: int) -> str | None:
    """Give the worker processes a shared, empty folder for their metric samples."""
    existing = os.environ.get(MULTIPROC_ENV)
    if existing:
        folder = Path(existing)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
        return None
    if workers == 1:
        return None
    created = tempfile.mkdtemp(prefix="keel-metrics-")
    os.environ[MULTIPROC_ENV] = created
    return created


def _bring_embedded_schema_up_to_date(settings: Settings) -> None:
    from keel.core import migrations

    async def upgrade(engine: AsyncEngine) -> str | None:
        await migrations.upgrade(engine, settings)
        return await migrations.current_revision(engine)

    revision = with_engine(settings, upgrade)
    typer.echo(
        f"Embedded database {settings.database_url.split('///')[-1]} at revision {revision}."
    )


def _exit_cleanly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes.")] = None,
    reload: Annotated[bool, typer.Option(help="Restart on code changes (development).")] = False,
    factory: Annotated[
        str, typer.Option(hidden=True, help="Import path of the app factory.")
    ] = DEFAULT_FACTORY,
) -> None:
    """Run the HTTP server."""
    from keel.cli import supervisor
    from keel.core.http_protocol import BoundedHeadProtocol
    from keel.core.logging import configure_logging
    from keel.core.websocket_protocol import GoingAwayWebSocketProtocol
    from keel.realtime.frames import MAX_FRAME_BYTES

    settings = load_settings()
    worker_count = workers or settings.server.workers
    problems = in_process_backend_problems(settings, worker_count)
    try:
        check_settings(settings, worker_count)
    except UnsafeSettingsError as exc:
        problems = exc.problems
    if problems:
        fail(problems)
    configure_logging(settings)

    if settings.uses_embedded_database:
        _bring_embedded_schema_up_to_date(settings)
    created_metrics_dir = _prepare_multiprocess_metrics(worker_count)
    trusted = settings.server.trusted_proxies
    # Uvicorn re-raises SIGTERM once it has shut down gracefully; with this handler in
    # place that ends the process with status 0, as a clean stop should.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        options: dict[str, Any] = {
            "factory": True,
            "host": host or settings.server.host,
            "port": port or settings.server.port,
            "workers": worker_count,
            "proxy_headers": bool(trusted),
            "forwarded_allow_ips": ",".join(trusted) if trusted else None,
            "timeout_graceful_shutdown": math.ceil(settings.server.graceful_timeout),
            "timeout_worker_healthcheck": settings.server.worker_healthcheck_timeout,
            "access_log": False,
            "log_config": None,
            "server_header": False,
            # Bounds on a request's head: its size (431) and how long it may take (408).
            "http": BoundedHeadProtocol,
            # Realtime: API.md's frame limit (1009 past it), pings from the server, and
            # 1001 to every connection on shutdown.
            "ws": GoingAwayWebSocketProtocol,
            "ws_max_size": MAX_FRAME_BYTES,
            "ws_ping_interval": settings.realtime.ping_interval_seconds,
            "ws_ping_timeout": settings.realtime.ping_timeout_seconds,
            "ws_per_message_deflate": settings.realtime.compression,
        }
        # Uvicorn, with a supervisor that stops listening at SIGTERM for several workers.
        supervisor.run_uvicorn(factory, reload=reload, **options)
    finally:
        if created_metrics_dir:
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(created_metrics_dir, ignore_errors=True)


@app.command()
def worker(
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="Jobs run at once (default KEEL_JOBS_CONCURRENCY)."),
    ] = None,
) -> None:
    """Run background jobs from the Redis queue (Dramatiq) until SIGTERM."""
    from keel.core.jobs.worker import WorkerStartError, run_worker
    from keel.core.logging import configure_logging
    from keel.jobs import JOBS, PERIODIC

    settings = load_settings()
    if not settings.redis.url:
        fail(
            [
                (
                    "keel worker takes jobs from Redis: set KEEL_REDIS_URL. Without Redis, "
                    "`keel serve` runs jobs in-process and needs no worker."
                )
            ]
        )
    if not settings.jobs_on_dramatiq:
        fail(["KEEL_JOBS_BACKEND=inprocess: the API runs its jobs itself, no worker needed."])
    try:
        check_settings(settings, 1)
    except UnsafeSettingsError as exc:
        fail(exc.problems)
    configure_logging(settings)
    try:
        run_worker(settings, JOBS, PERIODIC, threads=threads or settings.jobs.concurrency)
    except WorkerStartError as exc:
        fail([str(exc)])


@app.command()
def openapi() -> None:
    """Print the OpenAPI schema as JSON."""
    from keel.main import create_app

    settings = load_settings()
    schema = create_app(settings.model_copy(update={"docs_enabled": True})).openapi()
    typer.echo(json.dumps(schema, indent=2))


def _run_migration(name: str, *args: object, **kwargs: object) -> None:
    from keel.core import migrations

    settings = load_settings()

    async def work(engine: AsyncEngine) -> None:
        await migrations.run_command(engine, settings, name, *args, **kwargs)

    with_engine(settings, work)


@db_app.command()
def upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    _run_migration("upgrade", revision)
    typer.echo(f"Upgraded to {revision}.")


@db_app.command()
def downgrade(revision: Annotated[str, typer.Argument()] = "-1") -> None:
    """Revert migrations down to REVISION (default: one step)."""
    _run_migration("downgrade", revision)
    typer.echo(f"Downgraded to {revision}.")


@db_app.command()
def current() -> None:
    """Show the database's revision and the newest one."""
    from keel.core import migrations

    settings = load_settings()
    revision = with_engine(settings, migrations.current_revision)
    head = migrations.head_revision()
    state = "up to date" if revision == head else "behind: run `keel db upgrade`"
    typer.echo(f"current: {revision or '(none)'}  head: {head}  ({state})")


@db_app.command()
def revision(
    message: Annotated[str, typer.Option("-m", "--message", help="What the migration does.")],
    autogenerate: Annotated[
        bool, typer.Option(help="Compare models with the database to write the steps.")
    ] = True,
) -> None:
    """Write a new migration script (autogenerated: read it before committing)."""
    _run_migration("revision", message=message, autogenerate=autogenerate)


@db_app.command()
def check() -> None:
    """Fail when the models and the migrations disagree."""
    from alembic.util.exc import AutogenerateDiffsDetected

    try:
        _run_migration("check")
    except AutogenerateDiffsDetected as exc:
        fail([f"models and migrations disagree: {exc}"], code=1)
    typer.echo("Models and migrations agree.")


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
