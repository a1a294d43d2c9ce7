"""The `keel` command: serve, database migrations, the OpenAPI schema."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

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
users_app = typer.Typer(help="Accounts.", no_args_is_help=True)
app.add_typer(users_app, name="users")
files_app = typer.Typer(help="Stored files.", no_args_is_help=True)
app.add_typer(files_app, name="files")

T = TypeVar("T")

DEFAULT_FACTORY = "keel.main:app_factory"


def _fail(lines: list[str], code: int = 2) -> None:
    for line in lines:
        typer.secho(f"error: {line}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def _load_settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # pydantic's message names each bad variable
        _fail([f"invalid settings: {exc}"])
        raise  # unreachable, for the type checker


def _with_engine(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run `work(engine)` on a short-lived engine."""
    from keel.core.db import create_engine

    async def run() -> T:
        engine = create_engine(settings)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


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

    revision = _with_engine(settings, upgrade)
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
    import uvicorn

    from keel.core.logging import configure_logging

    settings = _load_settings()
    worker_count = workers or settings.server.workers
    problems = in_process_backend_problems(settings, worker_count)
    try:
        check_settings(settings, worker_count)
    except UnsafeSettingsError as exc:
        problems = exc.problems
    if problems:
        _fail(problems)
    configure_logging(settings)

    if settings.uses_embedded_database:
        _bring_embedded_schema_up_to_date(settings)
    created_metrics_dir = _prepare_multiprocess_metrics(worker_count)
    trusted = settings.server.trusted_proxies
    # Uvicorn re-raises SIGTERM once it has shut down gracefully; with this handler in
    # place that ends the process with status 0, as a clean stop should.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        uvicorn.run(
            factory,
            factory=True,
            host=host or settings.server.host,
            port=port or settings.server.port,
            workers=worker_count,
            reload=reload,
            proxy_headers=bool(trusted),
            forwarded_allow_ips=",".join(trusted) if trusted else None,
            timeout_graceful_shutdown=math.ceil(settings.server.graceful_timeout),
            access_log=False,
            log_config=None,
            server_header=False,
        )
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

    settings = _load_settings()
    if not settings.redis.url:
        _fail(
            [
                (
                    "keel worker takes jobs from Redis: set KEEL_REDIS_URL. Without Redis, "
                    "`keel serve` runs jobs in-process and needs no worker."
                )
            ]
        )
    if not settings.jobs_on_dramatiq:
        _fail(["KEEL_JOBS_BACKEND=inprocess: the API runs its jobs itself, no worker needed."])
    try:
        check_settings(settings, 1)
    except UnsafeSettingsError as exc:
        _fail(exc.problems)
    configure_logging(settings)
    try:
        run_worker(settings, JOBS, PERIODIC, threads=threads or settings.jobs.concurrency)
    except WorkerStartError as exc:
        _fail([str(exc)])


@app.command()
def openapi() -> None:
    """Print the OpenAPI schema as JSON."""
    from keel.main import create_app

    settings = _load_settings()
    schema = create_app(settings.model_copy(update={"docs_enabled": True})).openapi()
    typer.echo(json.dumps(schema, indent=2))


def _run_migration(name: str, *args: object, **kwargs: object) -> None:
    from keel.core import migrations

    settings = _load_settings()

    async def work(engine: AsyncEngine) -> None:
        await migrations.run_command(engine, settings, name, *args, **kwargs)

    _with_engine(settings, work)


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

    settings = _load_settings()
    revision = _with_engine(settings, migrations.current_revision)
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
        _fail([f"models and migrations disagree: {exc}"], code=1)
    typer.echo("Models and migrations agree.")


keys_app = typer.Typer(help="Access-token signing keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Make a new signing key; the old one stays published until its tokens expire."""
    from keel.core.security import keys

    settings = _load_settings()
    if settings.auth.signing_key_files:
        ttl = settings.auth.access_token_ttl_seconds
        _fail(
            [
                (
                    "the signing keys are the files in KEEL_AUTH_SIGNING_KEY_FILES: to rotate, "
                    "put a new P-256 PEM file first in that list, keep the old ones after it "
                    f"for at least {ttl} s (the access-token lifetime), then restart."
                )
            ]
        )
    try:
        ring = keys.rotate(settings)
    except keys.SigningKeyError as exc:
        _fail([str(exc)])
        raise  # unreachable, for the type checker
    typer.echo(f"New signing key: {ring.signing_key.kid}")
    for key in ring.keys:
        if key.valid_until is not None:
            typer.echo(f"Still published until {key.valid_until.isoformat()}: {key.kid}")
    # Running workers loaded their key ring at start-up.
    typer.echo("Restart the service so that it signs with the new key.")


@keys_app.command("list")
def keys_list() -> None:
    """Show each signing key: kid, source and status."""
    from keel.core.security import keys

    settings = _load_settings()
    if not settings.auth.signing_key_files and keys.GeneratedKeys(settings).read() is None:
        typer.echo("No key yet: one is generated at first start.")
        return
    try:
        ring = keys.KeyRing.load(settings)
    except keys.SigningKeyError as exc:
        _fail([str(exc)])
        raise  # unreachable, for the type checker
    now = keys.utc_now()
    for key in ring.keys:
        if key.kid == ring.signing_key.kid:
            status = "signing"
        elif key.valid_until is None:
            status = "verifying"
        elif key.is_live(now):
            status = f"retired, published until {key.valid_until.isoformat()}"
        else:
            status = "expired"
        typer.echo(f"{key.kid}  {key.source}  {status}")


@users_app.command("create")
def create_user(
    email: Annotated[str, typer.Argument(help="The account's e-mail address.")],
    admin: Annotated[bool, typer.Option("--admin", help="Make the account an admin.")] = False,
    full_name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    password_env: Annotated[
        str | None,
        typer.Option(help="Read the password from this environment variable, not a prompt."),
    ] = None,
) -> None:
    """Create an account (verified); prompts for its password unless --password-env."""
    from keel.auth.service import create_user as create
    from keel.core.db import Database
    from keel.core.errors import AppError
    from keel.core.security.passwords import PasswordHasher
    from keel.models import Role

    settings = _load_settings()
    if password_env is not None:
        password = os.environ.get(password_env)
        if not password:
            _fail([f"the environment variable {password_env} is not set or empty"])
            return
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)

    async def work(engine: AsyncEngine) -> str:
        database = Database(engine, None, settings.database.pool_timeout)
        async with database.transaction() as db:
            user = await create(
                db,
                PasswordHasher(settings.auth),
                email=email,
                password=password,
                full_name=full_name,
                role=Role.ADMIN if admin else Role.USER,
                is_verified=True,
            )
        return str(user["id"])

    try:
        user_id = _with_engine(settings, work)
    except AppError as exc:  # a taken e-mail (409) or a password the policy refuses (422)
        _fail([exc.detail_message])
        return
    role = "admin" if admin else "user"
    typer.echo(f"Created {role} {email.strip().lower()} ({user_id}).")


@files_app.command("check")
def files_check(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report orphaned objects; delete nothing.")
    ] = False,
) -> None:
    """Find stored objects no file refers to (and delete those older than the sweep's
    grace period), and files whose stored object is missing. Exit code 1 when a file's
    bytes are missing."""
    from datetime import timedelta

    from keel.core.db import Database
    from keel.core.storage import StorageError, create_storage
    from keel.files.sweep import sweep

    settings = _load_settings()

    async def work(engine: AsyncEngine) -> Any:
        storage = create_storage(settings)
        await storage.start()
        try:
            return await sweep(
                Database(engine, None, settings.database.pool_timeout),
                storage,
                grace=timedelta(seconds=settings.storage.sweep_grace_seconds),
                remove=not dry_run,
                progress=typer.echo,
            )
        finally:
            await storage.close()

    try:
        report = _with_engine(settings, work)
    except (StorageError, OSError) as exc:
        _fail([f"the storage cannot be read: {exc}"])
        return
    for line in report.describe(dry_run=dry_run):
        typer.echo(line)
    if report.missing:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
