"""Alembic, driven from code: the CLI, `keel serve` and `/ready` all use these."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from keel.config import Settings


def migrations_dir() -> Path:
    # Installed from a wheel, the scripts sit inside the package; in a checkout, beside it.
    packaged = Path(__file__).resolve().parent.parent / "migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "migrations"


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    config.set_main_option("sqlalchemy.url", settings.database_url.replace("%", "%%"))
    return config


def head_revision() -> str | None:
    """The newest revision of the migration scripts (read once: /ready asks often)."""
    return _head_of(str(migrations_dir()))


@functools.cache
def _head_of(script_location: str) -> str | None:
    return ScriptDirectory(script_location).get_current_head()


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(_current_revision)


async def run_command(
    engine: AsyncEngine, settings: Settings, name: str, *args: Any, **kwargs: Any
) -> None:
    """Run an Alembic command on one of the engine's connections, in one transaction."""
    config = alembic_config(settings)

    def run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        getattr(command, name)(config, *args, **kwargs)

    async with engine.begin() as connection:
        await connection.run_sync(run)


async def upgrade(engine: AsyncEngine, settings: Settings, revision: str = "head") -> None:
    await run_command(engine, settings, "upgrade", revision)


async def downgrade(engine: AsyncEngine, settings: Settings, revision: str) -> None:
    await run_command(engine, settings, "downgrade", revision)
