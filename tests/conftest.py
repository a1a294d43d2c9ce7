"""Test harness: the real app over HTTP (ASGI, with its lifespan), on a real database.

Async tests run on anyio's pytest plugin (each module sets `pytestmark = pytest.mark.anyio`).
Each test gets a fresh app and client; tables are emptied after each test and Redis keys
of this run deleted, so tests never see each other's rows. See fixtures/databases.py for
how the suite runs on PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete

from keel.config import DatabaseSettings, Settings
from keel.core import migrations
from keel.core.db import create_engine
from keel.main import create_app
from keel.models import Base
from tests.fixtures import databases, s3
from tests.fixtures.queries import StatementCounter, counting_statements
from tests.support import production
from tests.support.apps import client_for
from tests.support.mailbox import Mailbox, install_mailbox
from tests.support.smtp import Inbox, running_smtp_server

# The suite decides its own settings: a developer's KEEL_* variables must not leak in.
for _name in [name for name in os.environ if name.startswith("KEEL_")]:
    if not _name.startswith("KEEL_TEST_"):
        del os.environ[_name]

SettingsFactory = Callable[..., Settings]


def pytest_configure(config: pytest.Config) -> None:
    """A production-configured run (tests/support/production.py) needs PostgreSQL and
    Redis: say so at once, rather than in every live-server test."""
    if production.requested() and (missing := production.missing_services()):
        raise pytest.UsageError(
            f"{production.CONFIG_ENV}={production.PRODUCTION} needs {' and '.join(missing)}: "
            "production refuses several workers on SQLite or without Redis"
        )


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
async def database_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    server_url = os.environ.get(databases.DATABASE_ENV)
    if not server_url:
        yield databases.sqlite_url(tmp_path_factory.mktemp("db"))
        return
    url = await databases.create_postgres_database(server_url)
    try:
        yield url
    finally:
        await databases.drop_postgres_database(server_url, url)


@pytest.fixture(scope="session")
async def redis_url() -> str | None:
    url = os.environ.get(databases.REDIS_ENV)
    if url:
        await databases.check_redis(url)
    return url


@pytest.fixture(scope="session")
def redis_prefix() -> str:
    return f"keel-test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def requires_redis(redis_url: str | None) -> str:
    """Redis for tests that need it: skipped on the embedded run, run (never skipped)
    whenever KEEL_TEST_REDIS_URL is set, as in CI."""
    if not redis_url:
        pytest.skip(f"needs Redis: set {databases.REDIS_ENV}")
    return redis_url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server for this test run (started on first use), with credentials for
    it in the environment, where the AWS credential chain finds them."""
    with pytest.MonkeyPatch.context() as patch, s3.running_moto_server() as url:
        for name, value in s3.CREDENTIALS.items():
            patch.setenv(name, value)
        yield url


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def make_settings(
    database_url: str, redis_url: str | None, redis_prefix: str, data_dir: Path
) -> SettingsFactory:
    """Settings for a test app; keyword arguments override (groups as dicts)."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "env": "test",
            "data_dir": data_dir,
            "database": {"url": database_url},
            "redis": {"url": redis_url, "key_prefix": redis_prefix},
            "log": {"level": "INFO", "format": "json"},
            # Cheap hashes: the suite hashes hundreds of passwords; the parameters are
            # settings, and production's are tested where they matter (the upgrade).
            "auth": {"argon2_time_cost": 1, "argon2_memory_kib": 1024, "argon2_parallelism": 1},
            # Jobs run beside the app, which the test client waits for; the Dramatiq
            # runner is tested with a real worker where it is asked for.
            "jobs": {"backend": "inprocess"},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                values[key] = {**values[key], **value}
            else:
                values[key] = value
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings()


@pytest.fixture(scope="session")
async def migrated_database(database_url: str, data_dir: Path) -> str:
    settings = Settings(
        _env_file=None, data_dir=data_dir, database=DatabaseSettings(url=database_url)
    )
    engine = create_engine(settings)
    try:
        await migrations.upgrade(engine, settings)
    finally:
        await engine.dispose()
    return database_url


@pytest.fixture(autouse=True)
def _live_servers_leave_no_rows(request: pytest.FixtureRequest) -> Iterator[None]:
    """Live-server tests write to the run's database through their servers, where the
    `client` fixture's cleaning does not reach: empty it after each of them, so that they
    pass in any order and on their own (`-m slow`), not only with client tests between
    them (the first admin of one test was found by the next, which then made none)."""
    yield
    if (
        "migrated_database" in request.fixturenames
        and request.node.get_closest_marker("slow")
        and not request.node.get_closest_marker(ROWS_SHARED_BY_MODULE)
    ):
        _empty_after(request)


ROWS_SHARED_BY_MODULE = "rows_shared_by_module"


@pytest.fixture(autouse=True, scope="module")
def _modules_sharing_rows_leave_none(request: pytest.FixtureRequest) -> Iterator[None]:
    """A module whose tests share rows made once for the module (a module-scoped live
    server and its accounts) is emptied after its last test instead of after each."""
    yield
    if request.node.get_closest_marker(ROWS_SHARED_BY_MODULE):
        _empty_after(request)


def _empty_after(request: pytest.FixtureRequest) -> None:
    url: str = request.getfixturevalue("migrated_database")
    data_dir: Path = request.getfixturevalue("data_dir")
    # In a thread of its own: the test's event loop may still be running here.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, empty_database(url, data_dir)).result()


async def empty_database(url: str, data_dir: Path) -> None:
    """Delete every row of every table (children first): what one test's server made
    must not be seen by the next."""
    engine = create_engine(
        Settings(_env_file=None, data_dir=data_dir, database=DatabaseSettings(url=url))
    )
    try:
        async with engine.begin() as connection:
            for table in reversed(Base.metadata.sorted_tables):
                await connection.execute(delete(table))
    finally:
        await engine.dispose()


@pytest.fixture
def app(settings: Settings, migrated_database: str) -> FastAPI:
    return create_app(settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as http:
        yield http
        await empty_tables(app)
    await _forget_redis_keys(app)


async def empty_tables(app: FastAPI) -> None:
    async with app.state.resources.engine.begin() as connection:
        for table in reversed(Base.metadata.sorted_tables):
            await connection.execute(delete(table))


async def _forget_redis_keys(app: FastAPI) -> None:
    settings: Settings = app.state.settings
    if settings.redis.url:
        await databases.delete_keys(settings.redis.url, settings.redis.key_prefix)


@pytest.fixture
def count_queries(app: FastAPI, client: httpx.AsyncClient) -> Iterator[StatementCounter]:
    """Counts every SQL statement the app runs from here on (reset() between phases)."""
    with counting_statements(app.state.resources.database) as counter:
        yield counter


@pytest.fixture
def mailbox(app: FastAPI, client: httpx.AsyncClient) -> Mailbox:
    """Every e-mail the app's jobs send from here on, with the tokens they carry."""
    return install_mailbox(app)


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    """A real SMTP server for the test: its inbox and port."""
    with running_smtp_server() as server:
        yield server


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """For `keel` commands: a fresh data folder (and embedded database), named through
    the environment, and a working directory without a stray .env."""
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path
