"""The database: one connection per unit of work, statements compiled once.

Repositories write SQLAlchemy Core statements; this module runs them. A request (or a
job, or a claim that needs a transaction of its own) works through one `Unit`: it
takes a connection on its first statement, begins a transaction first when it may
write, and commits or rolls back at the end. Work that must happen only if the change
is durable (jobs, events) is registered with `after_commit`.

Two engines behind the one interface:

- PostgreSQL: each statement is compiled once per shape to asyncpg's SQL (the compiled
  form is cached under SQLAlchemy's own cache key) and run on a plain asyncpg pool. No
  ORM, no greenlet hop and no SQLAlchemy pool in the request path: profiling put
  SQLAlchemy's async execution at about half the cost of an authenticated read.
- SQLite (the embedded default): the same statements through SQLAlchemy's async
  connection, which applies the same types.

Rows come back as dicts keyed by the statement's column keys, with the column types'
conversions applied (UTC datetimes, enums), so both engines answer alike.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import asyncpg
import orjson
import structlog
from fastapi import Depends, Request
from sqlalchemy import event
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.sql import Executable
from starlette.types import Scope

from keel.config import Settings
from keel.core.openapi import answers

Row = dict[str, Any]
S = TypeVar("S", bound=Executable)
AfterCommit = Callable[[], Awaitable[None]]
StatementListener = Callable[[str], None]

_IDLE_SINCE_KEY = "keel.idle_since"
# Compiled statements kept per process; a shape beyond these is compiled again.
_COMPILED_CACHE_SIZE = 1000

log = structlog.get_logger("keel.db")


# ---------------------------------------------------------------- engines


def create_engine(settings: Settings, *, bound_statements: bool = False) -> AsyncEngine:
    """SQLAlchemy's engine: the embedded database's runtime, and on PostgreSQL the one
    that migrations, readiness checks, jobs and tests use beside the request pool.

    `bound_statements`: on PostgreSQL, a statement unanswered within the statement
    timeout fails, as on the request pool (the running app's engine: a hung server must
    not hold its jobs and checks forever). Off for migrations, which may take long."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        return _create_sqlite_engine(settings)
    connect_args: dict[str, Any] = {"timeout": settings.database.pool_timeout}
    if bound_statements:
        connect_args["command_timeout"] = settings.database.statement_timeout
    engine = create_async_engine(
        url,
        pool_size=settings.database.pool_size,
        max_overflow=settings.database.max_overflow,
        pool_timeout=settings.database.pool_timeout,
        echo=settings.database.echo,
        # A failed statement's error text (which the logs print) names the statement,
        # never what it was given: password and API-key hashes among them.
        hide_parameters=True,
        connect_args=connect_args,
    )
    _ping_after_idle(engine, settings.database.ping_after_idle_seconds)
    return engine


def _ping_after_idle(engine: AsyncEngine, idle_seconds: float) -> None:
    """Ping a pooled connection before use only when it has sat idle for a while.

    SQLAlchemy's pool_pre_ping pings on every checkout; a busy connection was just used
    successfully, while one idle past `idle_seconds` is where a database restart or a
    proxy's idle timeout hides. A failed ping makes the pool take another connection.
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
        hide_parameters=True,  # as on PostgreSQL: no parameters in error texts
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
    # expire_on_commit=False: objects stay readable after the commit.
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


# ---------------------------------------------------------------- statements on asyncpg

Convert = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Compiled:
    """One statement shape as asyncpg runs it."""

    sql: str
    compiled: Any  # SQLAlchemy's SQLCompiler
    # Bind names in $n order, each with its type's conversion (or None).
    binds: tuple[tuple[str, Convert | None], ...]
    # Python-side column defaults SQLAlchemy computes at execution: (bind name, column
    # default) for new ids and timestamps.
    defaults: tuple[tuple[str, Any], ...]
    # The statement's columns (SELECT or RETURNING): keys and conversions; none for a
    # command that returns no rows; None for textual SQL, whose rows name themselves.
    keys: tuple[str, ...] | None
    # (key, conversion) of the columns whose values need one (enums, UTC datetimes).
    results: tuple[tuple[str, Convert], ...]


# Statements built once at import, with their cache keys: id -> (statement, key).
_PREPARED: dict[int, tuple[Executable, Any]] = {}


def prepared(statement: S) -> S:
    """Mark a statement built once (a module constant, values passed as bindparams) so
    that running it skips working out its cache key each time."""
    construct: Any = statement
    _PREPARED[id(statement)] = (statement, construct._generate_cache_key())
    return statement


def is_prepared(statement: Executable) -> bool:
    known = _PREPARED.get(id(statement))
    return known is not None and known[0] is statement


def _default_value(default: Any) -> Any:
    return default.arg(None) if default.is_callable else default.arg


class _StatementCache:
    """Compiles each statement shape once for asyncpg. SQLAlchemy's cache key names the
    shape; the values bound in a statement are taken from it on every call."""

    def __init__(self) -> None:
        self.dialect = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
        self._entries: OrderedDict[Any, _Compiled] = OrderedDict()

    def prepare(self, statement: Any, params: dict[str, Any] | None) -> tuple[_Compiled, list[Any]]:
        # The key SQLAlchemy itself caches compiled statements under (its shape, and the
        # values bound in it, which construct_params takes from it on every call); a
        # statement built once at import has it worked out once too.
        known = _PREPARED.get(id(statement))
        cache_key = (
            known[1]
            if known is not None and known[0] is statement
            else (statement._generate_cache_key())
        )
        # An INSERT or UPDATE given values at execution sets the columns they name, as
        # with SQLAlchemy's own execution: the compiled form depends on which they are.
        column_keys = (
            tuple(sorted(params))
            if params and (statement.is_insert or statement.is_update)
            else None
        )
        entry_key = (cache_key.key, column_keys) if cache_key is not None else None
        entry = self._entries.get(entry_key)
        if entry is None:
            entry = self._compile(statement, cache_key, column_keys)
            if entry_key is not None:
                self._entries[entry_key] = entry
                if len(self._entries) > _COMPILED_CACHE_SIZE:
                    self._entries.popitem(last=False)
        values = entry.compiled.construct_params(
            params, extracted_parameters=cache_key.bindparams if cache_key is not None else None
        )
        for name, default in entry.defaults:
            # Columns left out get their Python-side default (a new id, the time), as
            # SQLAlchemy's own execution would give them.
            if params is None or name not in params:
                values[name] = _default_value(default)
        args = []
        for name, convert in entry.binds:
            value = values[name]
            args.append(convert(value) if convert is not None and value is not None else value)
        return entry, args

    def _compile(
        self, statement: Any, cache_key: Any, column_keys: tuple[str, ...] | None
    ) -> _Compiled:
        dialect = self.dialect
        compiled: Any = statement.compile(
            dialect=dialect, cache_key=cache_key, column_keys=column_keys
        )
        if compiled.post_compile_params:
            # An IN over a list is compiled per list length, which its cache key does not
            # tell apart: write such a test as equalities joined by OR.
            raise ValueError("IN (...) over a list of values is not supported here")
        columns = list(getattr(statement, "exported_columns", ()))
        command = compiled.isinsert or compiled.isupdate or compiled.isdelete
        textual = not columns and not command
        return _Compiled(
            sql=compiled.string,
            compiled=compiled,
            binds=tuple(
                (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
                for name in compiled.positiontup or ()
            ),
            defaults=(
                *((column.key, column.default) for column in compiled.insert_prefetch),
                *((column.key, column.onupdate) for column in compiled.update_prefetch),
            ),
            keys=None if textual else tuple(column.key for column in columns),
            results=tuple(
                (column.key, convert)
                for column in columns
                if (convert := column.type.dialect_impl(dialect).result_processor(dialect, None))
            ),
        )


def _as_row(entry: _Compiled, record: Any) -> Row:
    if entry.keys is None:  # textual SQL: its rows name their columns
        return dict(record)
    row = dict(zip(entry.keys, record, strict=True))
    for key, convert in entry.results:
        value = row[key]
        if value is not None:
            row[key] = convert(value)
    return row


def _rowcount(status: str) -> int:
    # asyncpg answers a command with its tag: "UPDATE 3", "DELETE 0", "INSERT 0 1".
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


async def _init_connection(connection: asyncpg.Connection) -> None:
    # JSON travels as text both ways, as with SQLAlchemy's own asyncpg dialect: its JSON
    # type serialises the values bound, and the values read are parsed here.
    for name in ("json", "jsonb"):
        await connection.set_type_codec(
            name, schema="pg_catalog", encoder=str, decoder=orjson.loads, format="text"
        )


async def _reset_connection(connection: asyncpg.Connection) -> None:
    # A unit never changes session state (no SET, LISTEN or advisory lock), so asyncpg's
    # full reset, a round trip on every release, is not needed: only a transaction left
    # open by a unit that could not finish is rolled back.
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


# ---------------------------------------------------------------- units of work


class Unit:
    """The statements of one request or job: one connection, taken on the first
    statement, and for a unit that may write one transaction."""

    def __init__(self, database: Database, *, write: bool) -> None:
        self.database = database
        self.write = write
        self._after_commit: list[AfterCommit] = []
        self._after_rollback: list[AfterCommit] = []

    async def all(self, statement: Executable, params: dict[str, Any] | None = None) -> list[Row]:
        """Every row of a SELECT or RETURNING (a command without one returns [])."""
        rows, _count = await self._run(statement, params)
        return rows

    async def one(self, statement: Executable, params: dict[str, Any] | None = None) -> Row | None:
        rows, _count = await self._run(statement, params)
        return rows[0] if rows else None

    async def value(self, statement: Executable, params: dict[str, Any] | None = None) -> Any:
        """The first column of the first row, or None."""
        row = await self.one(statement, params)
        return next(iter(row.values())) if row else None

    async def execute(self, statement: Executable, params: dict[str, Any] | None = None) -> int:
        """Run a command; the number of rows it touched."""
        rows, count = await self._run(statement, params)
        return len(rows) if rows else count

    async def _run(
        self, statement: Executable, params: dict[str, Any] | None
    ) -> tuple[list[Row], int]:
        raise NotImplementedError

    async def _end(self, *, commit: bool) -> None:
        raise NotImplementedError

    def after_commit(self, callback: AfterCommit) -> None:
        """Run `callback` once this unit has committed; never otherwise."""
        self._after_commit.append(callback)

    def after_rollback(self, callback: AfterCommit) -> None:
        """Run `callback` once this unit has rolled back (undo work done outside it, such
        as a claim committed in a transaction of its own)."""
        self._after_rollback.append(callback)

    async def commit(self) -> None:
        """Commit, then run what was waiting for the commit, in the order registered.
        A commit that fails counts as a rollback (its callbacks run, then it raises)."""
        try:
            await self._end(commit=True)
        except BaseException:
            await self._rolled_back()
            raise
        self._after_rollback.clear()
        callbacks, self._after_commit = self._after_commit, []
        await _run_callbacks(callbacks, "after_commit")

    async def rollback(self) -> None:
        try:
            await self._end(commit=False)
        finally:
            await self._rolled_back()

    async def _rolled_back(self) -> None:
        self._after_commit.clear()
        callbacks, self._after_rollback = self._after_rollback, []
        await _run_callbacks(callbacks, "after_rollback")


async def _run_callbacks(callbacks: list[AfterCommit], stage: str) -> None:
    for callback in callbacks:
        try:
            await callback()
        except Exception:
            # The transaction's fate is sealed: a failing follow-up (Redis away for a
            # publish, say) is logged, and neither undoes the change nor fails the request.
            log.exception("transaction_callback_failed", stage=stage)


class DatabaseConnectionLost(ConnectionError):
    """The connection a unit used was closed under it (the server restarted, shut
    down, or ended the backend): a dependency outage (503), never a bug (500)."""


# What a connection the server has closed shows on its next use: asyncpg says
# "connection was closed", "another operation is in progress" (its protocol state
# after an unsolicited FATAL), or relays the FATAL itself (57P01, terminated).
_CONNECTION_LOST: tuple[type[Exception], ...] = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.exceptions.AdminShutdownError,
)


class _PostgresUnit(Unit):
    def __init__(self, database: Database, pool: asyncpg.Pool, *, write: bool) -> None:
        super().__init__(database, write=write)
        self._pool = pool
        self._connection: Any = None
        self._used = False

    async def _acquire(self, *, retry_stale: bool = True) -> Any:
        connection = await self._pool.acquire(timeout=self.database.acquire_timeout)
        self.database.on_pool_change()
        if self.write:
            try:
                await connection.execute("BEGIN")
            except _CONNECTION_LOST as exc:
                await self._discard(connection)
                if not retry_stale:
                    raise DatabaseConnectionLost(str(exc)) from exc
                # Closed while it sat in the pool: nothing ran on it, another will do.
                return await self._acquire(retry_stale=False)
            except BaseException:
                await self._pool.release(connection)
                raise
        return connection

    async def _run(
        self, statement: Executable, params: dict[str, Any] | None
    ) -> tuple[list[Row], int]:
        entry, args = self.database.statements.prepare(statement, params)
        self.database.notify(entry.sql)
        if self._connection is None:
            self._connection = await self._acquire()
        try:
            try:
                result = await self._send(entry, args)
            except _CONNECTION_LOST as exc:
                if self._used:
                    raise DatabaseConnectionLost(str(exc)) from exc
                # The server closed this pooled connection while it sat idle (a restart,
                # a proxy's timeout, a terminated backend). Nothing ran on it yet, so a
                # fresh one takes over.
                connection, self._connection = self._connection, None
                await self._discard(connection)
                self._connection = await self._acquire()
                result = await self._send(entry, args)
        except asyncpg.IntegrityConstraintViolationError as exc:
            # One exception type for a violated constraint on both engines.
            raise IntegrityError(entry.sql, None, exc) from exc
        except _CONNECTION_LOST as exc:
            raise DatabaseConnectionLost(str(exc)) from exc
        self._used = True
        return result

    async def _send(self, entry: _Compiled, args: list[Any]) -> tuple[list[Row], int]:
        if entry.keys is None or entry.keys:
            records = await self._connection.fetch(entry.sql, *args)
            return [_as_row(entry, record) for record in records], len(records)
        return [], _rowcount(await self._connection.execute(entry.sql, *args))

    async def _discard(self, connection: Any) -> None:
        """Close a broken connection and hand its place back to the pool."""
        connection.terminate()
        with contextlib.suppress(Exception):
            await self._pool.release(connection)
        self.database.on_pool_change()

    async def _end(self, *, commit: bool) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            if self.write and not connection.is_closed():
                await connection.execute("COMMIT" if commit else "ROLLBACK")
        except _CONNECTION_LOST as exc:
            # A ROLLBACK on a lost connection has nothing left to undo: the server
            # rolled back when the connection ended. A COMMIT whose answer never came
            # has an unknown fate, and the client is told so (503: retry, with its
            # Idempotency-Key).
            if commit:
                raise DatabaseConnectionLost(str(exc)) from exc
        finally:
            await self._pool.release(connection)
            self.database.on_pool_change()


class _SqlAlchemyUnit(Unit):
    def __init__(self, database: Database, *, write: bool) -> None:
        super().__init__(database, write=write)
        self._connection: AsyncConnection | None = None

    async def _run(
        self, statement: Executable, params: dict[str, Any] | None
    ) -> tuple[list[Row], int]:
        if self._connection is None:
            self._connection = await self.database.engine.connect()
        result = await self._connection.execute(statement, params)
        if not result.returns_rows:
            return [], result.rowcount
        rows = [dict(row) for row in result.mappings()]
        return rows, len(rows)

    async def _end(self, *, commit: bool) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            if commit:
                await connection.commit()
            else:
                await connection.rollback()
        finally:
            await connection.close()


class Database:
    """The engine (and on PostgreSQL the request pool) a running app holds open."""

    def __init__(
        self, engine: AsyncEngine, pool: asyncpg.Pool | None, acquire_timeout: float
    ) -> None:
        self.engine = engine
        self.pool = pool
        self.acquire_timeout = acquire_timeout
        self.statements = _StatementCache()
        self._listeners: list[StatementListener] = []
        # Told when the request pool lends or takes back a connection (metrics).
        self.on_pool_change: Callable[[], None] = lambda: None

    @classmethod
    async def open(cls, settings: Settings, engine: AsyncEngine) -> Database:
        url = make_url(settings.database_url)
        pool = None
        if url.get_backend_name() == "postgresql":
            pool = await asyncpg.create_pool(
                url.set(drivername="postgresql").render_as_string(hide_password=False),
                min_size=0,
                max_size=settings.database.pool_size + settings.database.max_overflow,
                init=_init_connection,
                reset=_reset_connection,
                timeout=settings.database.pool_timeout,
                # A hung server fails the statement (503) instead of holding it forever.
                command_timeout=settings.database.statement_timeout,
            )
        return cls(engine, pool, settings.database.pool_timeout)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    def unit(self, *, write: bool) -> Unit:
        """A unit that connects on its first statement; the caller commits or rolls back.
        A unit that only reads runs each statement on its own (no BEGIN and COMMIT: two
        round trips saved; under READ COMMITTED each statement sees the same)."""
        if self.pool is not None:
            return _PostgresUnit(self, self.pool, write=write)
        return _SqlAlchemyUnit(self, write=write)

    @contextlib.asynccontextmanager
    async def transaction(self, *, write: bool = True) -> AsyncIterator[Unit]:
        """A unit of its own that commits when the block ends, or rolls back if it
        raises. `write=False` for reads: no BEGIN and COMMIT around them."""
        unit = self.unit(write=write)
        try:
            yield unit
        except BaseException:
            await unit.rollback()
            raise
        await unit.commit()

    def listen(self, listener: StatementListener) -> Callable[[], None]:
        """Call `listener` with each statement run on the request pool (tests count
        them; SQLAlchemy's engine has events of its own). Returns how to stop."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def notify(self, sql: str) -> None:
        for listener in self._listeners:
            listener(sql)


# ---------------------------------------------------------------- the request's unit

_UNIT_KEY = "keel.unit"
_SINGLE_STATEMENT_KEY = "keel.single_statement"
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


def run_statements_alone(scope: Scope) -> None:
    """This request's change is one statement: its unit needs no BEGIN and COMMIT (set
    by the route class for routes declared `single_statement`)."""
    scope[_SINGLE_STATEMENT_KEY] = True


@answers(503)
async def _request_unit(request: Request) -> Unit:
    unit: Unit | None = request.scope.get(_UNIT_KEY)
    if unit is None:
        database: Database = request.app.state.database
        transactional = request.method not in _READS and not request.scope.get(
            _SINGLE_STATEMENT_KEY
        )
        unit = database.unit(write=transactional)
        request.scope[_UNIT_KEY] = unit
    return unit


@answers(503)
async def _app_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


# The database itself, for work that outlives the request's unit (a streamed export's
# batches, an idempotency claim).
AppDatabase = Annotated[Database, Depends(_app_database)]


def unit_of(scope: Scope) -> Unit | None:
    """The request's unit, if anything asked for it (KeelRoute ends it)."""
    return scope.get(_UNIT_KEY)


# The request's unit of work: it connects on the first statement; KeelRoute commits it
# once the endpoint has answered (before the response is sent) or rolls it back.
DbSession = Annotated[Unit, Depends(_request_unit)]
