"""Commands on a deployment's data: signing keys, accounts, stored files."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Any

import typer

from keel.cli.common import fail, load_settings, with_engine

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

users_app = typer.Typer(help="Accounts.", no_args_is_help=True)
files_app = typer.Typer(help="Stored files.", no_args_is_help=True)

keys_app = typer.Typer(help="Access-token signing keys.", no_args_is_help=True)


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Make a new signing key; the old one stays published until its tokens expire."""
    from keel.core.security import keys

    settings = load_settings()
    if settings.auth.signing_key_files:
        ttl = settings.auth.access_token_ttl_seconds
        fail(
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
        fail([str(exc)])
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

    settings = load_settings()
    if not settings.auth.signing_key_files and keys.GeneratedKeys(settings).read() is None:
        typer.echo("No key yet: one is generated at first start.")
        return
    try:
        ring = keys.KeyRing.load(settings)
    except keys.SigningKeyError as exc:
        fail([str(exc)])
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

    settings = load_settings()
    if password_env is not None:
        password = os.environ.get(password_env)
        if not password:
            fail([f"the environment variable {password_env} is not set or empty"])
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
        user_id = with_engine(settings, work)
    except AppError as exc:  # a taken e-mail (409) or a password the policy refuses (422)
        fail([exc.detail_message])
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

    settings = load_settings()

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
        report = with_engine(settings, work)
    except (StorageError, OSError) as exc:
        fail([f"the storage cannot be read: {exc}"])
        return
    for line in report.describe(dry_run=dry_run):
        typer.echo(line)
    if report.missing:
        raise typer.Exit(1)
