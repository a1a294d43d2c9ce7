"""Keys, timestamps and engine settings that every model relies on."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Column, MetaData, Table, Uuid, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from keel.core.ids import uuid7
from keel.main import create_app
from keel.models import Base, UTCDateTime
from tests.conftest import SettingsFactory
from tests.factories.users import signed_in
from tests.support.apps import client_for

pytestmark = pytest.mark.anyio


def test_uuid7_has_version_and_variant() -> None:
    value = uuid7()
    assert value.version == 7
    assert value.variant == uuid.RFC_4122


def test_uuid7_is_time_ordered() -> None:
    earlier = uuid7()
    time.sleep(0.002)
    later = uuid7()
    assert earlier < later
    assert len({uuid7() for _ in range(1000)}) == 1000


def test_naming_convention_is_set() -> None:
    assert Base.metadata.naming_convention["fk"] == (
        "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"
    )


async def test_timestamps_come_back_timezone_aware(app: FastAPI, client: object) -> None:
    engine = app.state.resources.engine
    metadata = MetaData()
    table = Table(
        "probe_times",
        metadata,
        Column("id", Uuid, primary_key=True),
        Column("at", UTCDateTime, nullable=False),
    )
    moment = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone(timedelta(hours=2)))
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    try:
        async with engine.begin() as connection:
            await connection.execute(insert(table).values(id=uuid7(), at=moment))
            stored = (await connection.execute(select(table.c.at))).scalar_one()
        assert stored.tzinfo is not None
        assert stored.utcoffset() == timedelta(0)
        assert stored == moment
        assert stored.astimezone(UTC).hour == 1
    finally:
        async with engine.begin() as connection:
            await connection.run_sync(metadata.drop_all)


async def test_naive_datetimes_are_refused(app: FastAPI, client: object) -> None:
    column = UTCDateTime()
    with pytest.raises(ValueError, match="naive"):
        column.process_bind_param(datetime(2026, 1, 1), app.state.resources.engine.dialect)  # noqa: DTZ001


async def test_engine_is_configured_for_its_backend(app: FastAPI, client: object) -> None:
    engine = app.state.resources.engine
    async with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            journal = (await connection.execute(text("PRAGMA journal_mode"))).scalar_one()
            foreign_keys = (await connection.execute(text("PRAGMA foreign_keys"))).scalar_one()
            assert journal == "wal"
            assert foreign_keys == 1
        else:
            assert engine.dialect.driver == "asyncpg"
            assert engine.pool.size() == 10


async def test_after_commit_and_after_rollback_run_only_on_their_outcome(
    app: FastAPI, client: object, capsys: pytest.CaptureFixture[str]
) -> None:
    ran: list[str] = []

    def note(what: str) -> Callable[[], Awaitable[None]]:
        async def callback() -> None:
            ran.append(what)

        return callback

    async def fails() -> None:
        raise ConnectionError("redis away")

    database = app.state.resources.database
    unit = database.unit(write=True)
    unit.after_commit(fails)  # a failing follow-up neither stops the next...
    unit.after_commit(note("committed"))
    unit.after_rollback(note("not rolled back"))
    await unit.commit()  # ...nor raises here
    unit = database.unit(write=True)
    unit.after_commit(note("not committed"))
    unit.after_rollback(note("rolled back"))
    await unit.rollback()
    assert ran == ["committed", "rolled back"]
    assert "transaction_callback_failed" in capsys.readouterr().out


async def test_a_pooled_connection_lost_while_idle_is_replaced_unnoticed(
    make_settings: SettingsFactory, migrated_database: str, client: httpx.AsyncClient
) -> None:
    settings = make_settings(database={"url": migrated_database, "ping_after_idle_seconds": 0})
    if make_url(settings.database_url).get_backend_name() != "postgresql":
        pytest.skip("needs PostgreSQL: set KEEL_TEST_DATABASE_URL")
    app = create_app(settings)
    async with client_for(app) as http:
        me = await signed_in(app, http)
        assert (await http.get("/api/v1/users/me", headers=me.headers)).status_code == 200
        # The server ends the pool's connection (a restart, a proxy's idle timeout).
        database = app.state.resources.database
        async with database.transaction(write=False) as unit:
            pid = await unit.value(text("SELECT pg_backend_pid()"))
        url = make_url(settings.database_url).set(drivername="postgresql")
        side = await asyncpg.connect(url.render_as_string(hide_password=False))
        try:
            assert await side.fetchval("SELECT pg_terminate_backend($1)", pid) is True
        finally:
            await side.close()
        # The ping finds the dead connection before the request uses it.
        assert (await http.get("/api/v1/users/me", headers=me.headers)).status_code == 200


async def test_a_failed_statement_never_shows_its_parameters(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Issue 12, point 4: what a failed statement was given (a password hash, an API key's
    hash) must not reach the error's text, which the logs print."""
    secret = "$argon2id$v=19$m=65536,t=3,p=2$not-for-the-logs"
    async with app.state.resources.engine.connect() as connection:
        with pytest.raises(DBAPIError) as failed:
            await connection.execute(
                text("SELECT no_such_column FROM users WHERE password_hash = :hash"),
                {"hash": secret},
            )
    assert secret not in str(failed.value)
    assert "no_such_column" in str(failed.value)  # the statement itself still shows
