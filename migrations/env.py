"""Alembic environment: async engines, every model's metadata, batch mode on SQLite."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from keel.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # Migrations must not import application code: write Keel's column types as the
    # plain SQLAlchemy types they store as.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _for_dialect(dialect: str) -> Any:
    """Leave out of the comparison what a model marks for another database only
    (`info={"dialect": "postgresql"}`, beside `.ddl_if(dialect=...)`)."""

    def include_object(obj: Any, name: str | None, type_: str, *_args: Any) -> bool:
        only_on = getattr(obj, "info", {}).get("dialect")
        return only_on is None or only_on == dialect

    return include_object


def _configure(connection: Connection) -> None:
    context.configure(
        include_object=_for_dialect(connection.dialect.name),
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # SQLite reports defaults as text it rewrote; compare them where they round-trip.
        compare_server_default=connection.dialect.name != "sqlite",
        render_item=_render_item,
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_new_engine() -> None:
    engine = create_async_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
elif (connection := config.attributes.get("connection")) is not None:
    # Called from keel.core.migrations with a connection already open.
    _run(connection)
else:
    asyncio.run(_run_with_new_engine())
