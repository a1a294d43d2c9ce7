"""Database engine and the per-request session.

The request owns the transaction: the session dependency commits when the endpoint
returns and rolls back when it raises. Services only flush. Work that must happen only
if the change is durable (jobs, events) is registered with `after_commit` and runs once
the commit has succeeded.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from keel.config import Settings

AfterCommit = Callable[[], Awaitable[None]]
_AFTER_COMMIT_KEY = "keel.after_commit"
_AFTER_ROLLBACK_KEY = "keel.after_rollback"
_IDLE_SINCE_KEY = "keel.idle_since"
_READS = frozenset({"GET", "HEAD"})

log = structlog.get_logger("keel.db")


def create_engine(settings: Settings) -> AsyncEngine:
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        return _create_sqlite_engine(settings)
    engine = create_async_engine(
        url,
        pool_size=settings.database.pool_size,
        max_overflow=settings.database.max_overflow,
        pool_timeout=settings.database.pool_timeout,
        echo=settings.database.echo,
        connect_args={"timeout": settings.database.pool_timeout},
    )
    _ping_after_idle(engine, settings.database.ping_after_idle_seconds)
    return engine


def _ping_after_idle(engine: AsyncEngine, idle_seconds: float) -> None:
    """Ping a pooled connection before use only when it has sat idle for a while.

    SQLAlchemy's pool_pre_ping pings on every checkout: with asyncpg that is BEGIN, a
    statement and ROLLBACK, three round trips before each request's own work. A busy
    connection was just used successfully; one idle past `idle_seconds` is where a
    database restart or a proxy's idle timeout hides, and is checked. A failed ping
    makes the pool drop the connection and take another (DisconnectionError).
    """
    pool = engine.sync_engine.pool
    dialect = engine.sync_engine.dialect

    @event.listens_for(pool, "checkin")
    def _idle_from_now(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE_KEY] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE_KEY)
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("pooled connection failed its ping") from exc


def _create_sqlite_engine(settings: Settings) -> AsyncEngine:
    url = make_url(settings.database_url)
    if url.database and url.database != ":memory:":
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        url,
        echo=settings.database.echo,
        connect_args={"timeout": settings.database.pool_timeout},
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets readers run beside the writer; foreign keys are off unless asked for.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: the response is built from the objects after the commit.
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def after_commit(session: AsyncSession, callback: AfterCommit) -> None:
    """Run `callback` once this session's transaction has committed; never otherwise."""
    session.info.setdefault(_AFTER_COMMIT_KEY, []).append(callback)


def after_rollback(session: AsyncSession, callback: AfterCommit) -> None:
    """Run `callback` once this session's transaction has rolled back (undo work done
    outside it, such as a claim committed in a transaction of its own)."""
    session.info.setdefault(_AFTER_ROLLBACK_KEY, []).append(callback)


async def _run(callbacks: list[AfterCommit], stage: str) -> None:
    for callback in callbacks:
        try:
            await callback()
        except Exception:
            # The transaction's fate is sealed: a failing follow-up (Redis away for a
            # publish, say) is logged, and neither undoes the change nor fails the request.
            log.exception("transaction_callback_failed", stage=stage)


async def commit(session: AsyncSession) -> None:
    """Commit, then run what was waiting for the commit, in the order it was registered."""
    await session.commit()
    session.info.pop(_AFTER_ROLLBACK_KEY, None)
    await _run(session.info.pop(_AFTER_COMMIT_KEY, []), "after_commit")


async def rollback(session: AsyncSession) -> None:
    session.info.pop(_AFTER_COMMIT_KEY, None)
    try:
        await session.rollback()
    finally:
        await _run(session.info.pop(_AFTER_ROLLBACK_KEY, []), "after_rollback")


async def _request_session(request: Request) -> AsyncIterator[AsyncSession]:
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.resources.sessionmaker
    async with sessionmaker() as session:
        try:
            if request.method in _READS and sessionmaker.kw["bind"].dialect.name == "postgresql":
                # A read runs its statements as they come, without BEGIN and COMMIT: two
                # round trips saved, and under READ COMMITTED each statement sees the
                # same as it would inside a transaction. (A write a GET may make, such as
                # an API key's last_used_at, commits at once.)
                await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            yield session
            await commit(session)
        except BaseException:
            await rollback(session)
            raise


# scope="function": the commit happens when the endpoint returns, before the response
# is sent, so a client never sees success for a change that did not commit.
DbSession = Annotated[AsyncSession, Depends(_request_session, scope="function")]
