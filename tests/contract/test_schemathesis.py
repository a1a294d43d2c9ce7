"""Schemathesis 4 against a live server, for every kind of caller: the OpenAPI document
is the contract, and the service keeps it (issue 12, point 13).

One `keel serve` on the suite's database (and Redis, when the run has it) is tested
once per caller: anonymous, an API key, and a password sign-in of a user, a moderator
and an admin. Each run has every phase (examples, coverage, fuzzing, stateful) and
every default check, with a fixed seed and derandomised generation, so that a run
finds what the last one found. Rate limits are raised out of the way.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import httpx
import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from keel.config import AuthSettings, DatabaseSettings, Settings
from keel.core.db import create_engine
from keel.core.security.passwords import PasswordHasher
from keel.models import Role, User
from tests.conftest import empty_database
from tests.contract import known_issues
from tests.contract.support import PASSWORD, Account, Caller, new_account, run_schemathesis
from tests.fixtures import databases
from tests.support.servers import Server, live_env, serve, wait_until_healthy

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

GENEROUS = "100000/minute"
SEED = 20261201

# Generated cases per operation and phase, per caller. Without credentials most
# operations stop at 401 whatever is sent; an admin reaches every operation's rules.
# Fewer than 30 for the admin missed the NUL bug on PostgreSQL; the whole run stays
# under two minutes here (2 cores, shared).
MAX_EXAMPLES = {"anonymous": 10, "api-key": 15, "user": 20, "moderator": 20, "admin": 30}
CALLERS = list(MAX_EXAMPLES)


@pytest.fixture(scope="module")
async def contract_server(
    tmp_path_factory: pytest.TempPathFactory,
    migrated_database: str,
    redis_url: str | None,
    redis_prefix: str,
) -> AsyncIterator[Server]:
    workdir = tmp_path_factory.mktemp("contract")
    settings = {
        "KEEL_LIMIT_TOKEN_ACCOUNT": GENEROUS,
        "KEEL_LIMIT_TOKEN_IP": GENEROUS,
        "KEEL_LIMIT_REGISTER_IP": GENEROUS,
        "KEEL_LIMIT_EMAIL_IP": GENEROUS,
        "KEEL_JOBS_BACKEND": "inprocess",
        "KEEL_LOG_LEVEL": "WARNING",
    }
    if redis_url:
        settings |= {"KEEL_REDIS_URL": redis_url, "KEEL_REDIS_KEY_PREFIX": redis_prefix}
    env = live_env(workdir / "data", migrated_database, **settings)
    with serve(workdir, env) as server:
        await wait_until_healthy(server)
        yield server
    # What the runs made must not be seen by the tests after them.
    await empty_database(migrated_database, workdir)
    if redis_url:
        await databases.delete_keys(redis_url, redis_prefix)


def _settings(database_url: str, data_dir: Path) -> Settings:
    return Settings(_env_file=None, data_dir=data_dir, database=DatabaseSettings(url=database_url))


class AccountStore:
    """Puts the test's accounts in the database directly, as they must be."""

    def __init__(self, engine: AsyncEngine, hashed_password: str) -> None:
        self.engine = engine
        self.hashed_password = hashed_password

    async def put(self, account: Account) -> None:
        values = {"role": account.role, "is_active": True, "hashed_password": self.hashed_password}
        async with self.engine.begin() as connection:
            found = await connection.scalar(select(User.id).where(User.email == account.email))
            if found is None:
                await connection.execute(
                    insert(User).values(email=account.email, is_verified=True, **values)
                )
            else:
                await connection.execute(update(User).where(User.id == found).values(**values))


@contextlib.asynccontextmanager
async def account_store(database_url: str, data_dir: Path) -> AsyncIterator[AccountStore]:
    hasher = PasswordHasher(
        AuthSettings(argon2_time_cost=1, argon2_memory_kib=1024, argon2_parallelism=1)
    )
    engine = create_engine(_settings(database_url, data_dir))
    try:
        yield AccountStore(engine, await hasher.hash(PASSWORD))
    finally:
        hasher.close()
        await engine.dispose()


async def _api_key_of(server: Server, caller: Caller) -> str:
    async with httpx.AsyncClient(base_url=server.url) as http:
        token = await anyio.to_thread.run_sync(caller.credential)
        response = await http.post(
            "/api/v1/api-keys",
            json={"name": "contract"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


def _from_threads() -> Callable[[Callable[[], Awaitable[None]]], None]:
    """Run a coroutine function on this event loop from any thread, and wait for it."""
    token = anyio.lowlevel.current_token()

    def run(function: Callable[[], Awaitable[None]]) -> None:
        async def call() -> None:
            await function()

        anyio.from_thread.run(call, token=token)

    return run


async def _caller(kind: str, server: Server, store: AccountStore) -> Caller:
    if kind == "anonymous":
        return Caller(kind, server.url)
    role = Role.USER if kind == "api-key" else Role(kind)
    account = new_account(role)
    await store.put(account)
    caller = Caller(kind, server.url, account, restore=store.put, run_async=_from_threads())
    if kind == "api-key":
        caller.api_key = await _api_key_of(server, caller)
    return caller


def config_for(kind: str) -> dict[str, Any]:
    """Schemathesis' settings: every phase and default check, deterministic."""
    return {
        "seed": SEED,
        "workers": 1,
        # No state kept between runs (it would change what the next run generates).
        "cache": {"enabled": False},
        "auth": {"auto-signup": False},
        "request-timeout": 30,
        "warnings": {"enabled": False},
        "generation": {
            "max-examples": MAX_EXAMPLES[kind],
            "deterministic": True,
            "database": "none",
            **known_issues.GENERATION,
        },
        "phases": {"stateful": {"generation": {"max-examples": 60}}},
        "checks": known_issues.CHECKS,
        "operations": known_issues.OPERATIONS,
    }


@pytest.mark.parametrize("kind", CALLERS)
async def test_schemathesis_finds_no_failure(
    contract_server: Server, migrated_database: str, tmp_path: Path, kind: str
) -> None:
    async with account_store(migrated_database, tmp_path) as store:
        caller = await _caller(kind, contract_server, store)
        outcome = await anyio.to_thread.run_sync(
            run_schemathesis, contract_server.url, caller, config_for(kind), known_issues.KNOWN
        )
    # Shown with -s (and by pytest when the test fails): what ran, what was left out.
    print(outcome.summary(kind, caller))  # noqa: T201
    assert not outcome.failures, outcome.report()
    assert not outcome.errors, outcome.report()
    # It ran: every phase generated cases, and stateful scenarios ran; signed in, they
    # followed links (one resource's id into the next call).
    assert outcome.cases > 500
    assert outcome.stateful_scenarios > 0
    if kind != "anonymous":
        assert outcome.links_covered
