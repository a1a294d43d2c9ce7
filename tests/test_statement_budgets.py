"""Statement budgets: the exact number of SQL statements every HTTP endpoint runs.

One table, `BUDGETS`: a case per endpoint (and per path through it that costs
differently), with the statements it runs and what each one is. Counts are exact (`==`):
a statement added or removed fails the test, so a budget changes only on purpose, in
the same commit as the code that changes it, and with its comment.

What is counted: every statement the app's engine executes (tests/fixtures/queries.py)
from `count_queries.reset()`, which comes after the case's data is set up, until the
response is back. The test
client waits for the in-process jobs a request enqueued (tests/support/apps.py,
JoiningJobs) before it returns the response, so their statements fall in that window
too; they are counted apart (a statement run inside a `job:*` task is a job's), so each
case states what the request itself costs and what its jobs (the e-mails) cost. The
periodic purges are jobs of the schedule, not of the request: one that happens to come
due during a request is left out, so the counts stay the same at any time of day.

Not counted, because they are not statements: BEGIN, COMMIT and ROLLBACK (the driver's
own calls), SQLite's connection pragmas, and the pool's ping of a connection idle for a
while. Redis round trips (rate limits, session revocations) are not SQL either.

Every count is the same on SQLite and on PostgreSQL (the suite runs on both); where the
statement itself differs (the /ready migrations check), its comment says so.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event

from keel.auth.repository import find_user
from keel.auth.sessions import Client, start_session
from keel.jobs import PERIODIC
from keel.models import Role
from tests.factories.items import make_item, make_items
from tests.factories.users import (
    DEFAULT_PASSWORD,
    SignedIn,
    login,
    make_user,
    signed_in,
    unique_email,
)
from tests.fixtures.queries import StatementCounter
from tests.support.mailbox import Mailbox

pytestmark = pytest.mark.anyio

AUTH = "/api/v1/auth"
USERS = "/api/v1/users"
KEYS = "/api/v1/api-keys"
ITEMS = "/api/v1/items"
FILES = "/api/v1/files"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
NEW_PASSWORD = "a brand new passphrase"


class Budget(NamedTuple):
    """What one case costs. `route` is the route it calls (method and template)."""

    route: str
    request: int  # statements the request itself runs
    jobs: int = 0  # statements the jobs it enqueued run (after its response)
    mails: tuple[str, ...] = ()  # the e-mails those jobs sent: proof that they ran


# name -> Budget. Each comment lists the statements, in the order they run. "Token auth"
# (a signed access token) costs no statement: its signature is checked in process and
# its session against the revocation list, in memory or in Redis.
BUDGETS: dict[str, Budget] = {
    # -- auth --------------------------------------------------------------------------
    # INSERT user; INSERT verification token. Job (welcome e-mail): none.
    "auth.register": Budget("POST /api/v1/auth/register", 2, mails=("welcome",)),
    # SELECT user by e-mail; INSERT session; INSERT refresh token.
    "auth.token.password": Budget("POST /api/v1/auth/token", 3),
    # UPDATE refresh token (spend) RETURNING session id; UPDATE the live session
    # (last_used_at, ip) RETURNING its expiry and user; SELECT user; INSERT the new
    # refresh token.
    "auth.token.refresh": Budget("POST /api/v1/auth/token", 4),
    # UPDATE refresh token (spend: matches nothing); SELECT the token (spent?); UPDATE
    # its session (end the family) RETURNING id.
    "auth.token.refresh_reused": Budget("POST /api/v1/auth/token", 3),
    # UPDATE the session whose id a subquery finds from the refresh token (end)
    # RETURNING id.
    "auth.logout": Budget("POST /api/v1/auth/logout", 1),
    # UPDATE the caller's live sessions (end) RETURNING ids.
    "auth.logout_all": Budget("POST /api/v1/auth/logout-all", 1),
    # SELECT the page.
    "auth.sessions.list": Budget("GET /api/v1/auth/sessions", 1),
    # SELECT the page; SELECT count(*).
    "auth.sessions.list_with_total": Budget("GET /api/v1/auth/sessions", 2),
    # UPDATE the session (end) RETURNING id.
    "auth.sessions.delete": Budget("DELETE /api/v1/auth/sessions/{session_id}", 1),
    # UPDATE one-time token (spend) RETURNING user id, e-mail; UPDATE user (verified)
    # where it still has that address.
    "auth.verify_email": Budget("POST /api/v1/auth/verify-email", 2),
    # SELECT user (current user); INSERT verification token. Job (e-mail): none.
    "auth.verify_email.request": Budget(
        "POST /api/v1/auth/verify-email/request", 2, mails=("verify_email",)
    ),
    # Request: none (the job looks the address up, so the answer's timing tells nothing).
    # Job: SELECT user by e-mail; INSERT reset token.
    "auth.forgot_password.known": Budget(
        "POST /api/v1/auth/forgot-password", 0, jobs=2, mails=("reset_password",)
    ),
    # Job: SELECT user by e-mail (none: no token, no e-mail).
    "auth.forgot_password.unknown": Budget("POST /api/v1/auth/forgot-password", 0, jobs=1),
    # UPDATE one-time token (spend) RETURNING user id, e-mail; SELECT user; UPDATE
    # sessions (end all) RETURNING ids; UPDATE user (password). Job (e-mail): none.
    "auth.reset_password": Budget(
        "POST /api/v1/auth/reset-password", 4, mails=("password_changed",)
    ),
    # The public keys, from memory.
    "auth.jwks": Budget("GET /.well-known/jwks.json", 0),
    # -- users -------------------------------------------------------------------------
    # SELECT user (current user).
    "users.me.read": Budget("GET /api/v1/users/me", 1),
    # SELECT user; UPDATE user.
    "users.me.update_name": Budget("PATCH /api/v1/users/me", 2),
    # SELECT user; UPDATE user (a taken address is the unique index's 409); INSERT
    # verification token. Job (e-mail): none.
    "users.me.update_email": Budget("PATCH /api/v1/users/me", 3, mails=("verify_email",)),
    # SELECT user; UPDATE user (password); UPDATE the other sessions (end) RETURNING
    # ids. Job: none.
    "users.me.password": Budget("POST /api/v1/users/me/password", 3, mails=("password_changed",)),
    # SELECT user; SELECT their files' storage keys; UPDATE sessions (end) RETURNING ids;
    # DELETE user (the rest cascades). Job (delete the file's bytes): no statement.
    "users.me.delete": Budget("DELETE /api/v1/users/me", 4),
    # SELECT the page.
    "users.list": Budget("GET /api/v1/users", 1),
    # SELECT the page; SELECT count(*).
    "users.list_with_total": Budget("GET /api/v1/users", 2),
    # INSERT user.
    "users.create": Budget("POST /api/v1/users", 1),
    # SELECT user.
    "users.read": Budget("GET /api/v1/users/{user_id}", 1),
    # SELECT user; UPDATE user.
    "users.update_name": Budget("PATCH /api/v1/users/{user_id}", 2),
    # SELECT user; UPDATE sessions (end) RETURNING ids; UPDATE user.
    "users.update_deactivate": Budget("PATCH /api/v1/users/{user_id}", 3),
    # SELECT user; UPDATE active admins (lock them: the last-admin rule) RETURNING ids;
    # UPDATE sessions (end) RETURNING ids; UPDATE user.
    "users.update_demote_admin": Budget("PATCH /api/v1/users/{user_id}", 4),
    # SELECT user; SELECT their files' storage keys; UPDATE sessions (end) RETURNING
    # ids; DELETE user.
    "users.delete": Budget("DELETE /api/v1/users/{user_id}", 4),
    # -- API keys ----------------------------------------------------------------------
    # INSERT key.
    "api_keys.create": Budget("POST /api/v1/api-keys", 1),
    # SELECT the page.
    "api_keys.list": Budget("GET /api/v1/api-keys", 1),
    # DELETE key RETURNING id.
    "api_keys.delete": Budget("DELETE /api/v1/api-keys/{key_id}", 1),
    # GET /users/me with a key, first use: SELECT key joined with its user; UPDATE key
    # (last_used_at); SELECT user (current user).
    "api_keys.use_first": Budget("GET /api/v1/users/me", 3),
    # Again within the minute: last_used_at is left alone.
    "api_keys.use_again": Budget("GET /api/v1/users/me", 2),
    # An unknown key: SELECT key (none), then 401.
    "api_keys.use_unknown": Budget("GET /api/v1/users/me", 1),
    # -- items -------------------------------------------------------------------------
    # SELECT the page.
    "items.list": Budget("GET /api/v1/items", 1),
    # SELECT the page; SELECT count(*).
    "items.list_with_total": Budget("GET /api/v1/items", 2),
    # INSERT item.
    "items.create": Budget("POST /api/v1/items", 1),
    # INSERT idempotency record (the claim, own transaction); INSERT item; UPDATE record
    # (the response, in the request's transaction).
    "items.create_idempotent": Budget("POST /api/v1/items", 3),
    # INSERT idempotency record (fails: the key exists); SELECT record: replayed.
    "items.create_replayed": Budget("POST /api/v1/items", 2),
    # SELECT item.
    "items.read": Budget("GET /api/v1/items/{item_id}", 1),
    # SELECT item: its version is the ETag sent, 304.
    "items.read_not_modified": Budget("GET /api/v1/items/{item_id}", 1),
    # UPDATE item RETURNING it (visibility, permission and If-Match in the WHERE).
    "items.replace": Budget("PUT /api/v1/items/{item_id}", 1),
    # UPDATE item RETURNING it.
    "items.update": Budget("PATCH /api/v1/items/{item_id}", 1),
    # UPDATE item (matches nothing: stale If-Match); SELECT item (why: 412).
    "items.update_stale": Budget("PATCH /api/v1/items/{item_id}", 2),
    # DELETE item RETURNING it.
    "items.delete": Budget("DELETE /api/v1/items/{item_id}", 1),
    # One SELECT per 100 rows (export.BATCH_ROWS), each in a short unit of its own.
    "items.export": Budget("GET /api/v1/items/export", 1),
    # SELECT item (not the caller's: none), 404.
    "items.read_others": Budget("GET /api/v1/items/{item_id}", 1),
    # UPDATE item (matches nothing); SELECT item (why: not visible, 404).
    "items.update_others": Budget("PATCH /api/v1/items/{item_id}", 2),
    # Refused before anything reads the database.
    "items.no_credentials": Budget("GET /api/v1/items", 0),  # 401
    "items.bad_body": Budget("POST /api/v1/items", 0),  # 422
    # -- files -------------------------------------------------------------------------
    # INSERT the usage row if missing (ON CONFLICT DO NOTHING); UPDATE usage within the
    # quota RETURNING it; INSERT file. No statement while the bytes stream.
    "files.upload": Budget("POST /api/v1/files", 3),
    # INSERT idempotency record (the claim, once the bytes are in); the three above;
    # UPDATE record (the response).
    "files.upload_idempotent": Budget("POST /api/v1/files", 5),
    # INSERT idempotency record (fails: the key exists); SELECT record: replayed (and
    # the bytes just received deleted).
    "files.upload_replayed": Budget("POST /api/v1/files", 2),
    # Refused from the first bytes, before anything reads the database.
    "files.upload_refused_type": Budget("POST /api/v1/files", 0),  # 415
    # SELECT the page.
    "files.list": Budget("GET /api/v1/files", 1),
    # SELECT file.
    "files.read": Budget("GET /api/v1/files/{file_id}", 1),
    # SELECT file; the bytes stream from storage.
    "files.content": Budget("GET /api/v1/files/{file_id}/content", 1),
    # SELECT file: its sha256 is the ETag sent, 304.
    "files.content_not_modified": Budget("GET /api/v1/files/{file_id}/content", 1),
    # SELECT file; the signature is checked in process.
    "files.link": Budget("POST /api/v1/files/{file_id}/link", 1),
    # SELECT file (by id alone: the signature stands for the caller).
    "files.download_by_link": Budget("GET /api/v1/files/{file_id}/download", 1),
    # A bad signature is refused before anything reads the database.
    "files.download_by_bad_link": Budget("GET /api/v1/files/{file_id}/download", 0),  # 403
    # DELETE file RETURNING it; UPDATE usage (minus its size). The bytes go after.
    "files.delete": Budget("DELETE /api/v1/files/{file_id}", 2),
    # -- operations --------------------------------------------------------------------
    "ops.health": Budget("GET /health", 0),
    # SELECT 1 (database check); then the migrations check, through Alembic: does the
    # alembic_version table exist (PRAGMA table_info on SQLite, a pg_catalog query on
    # PostgreSQL: another statement, the same count), then SELECT its version_num.
    "ops.ready": Budget("GET /ready", 3),
    "ops.metrics": Budget("GET /metrics", 0),
    "ops.openapi": Budget("GET /openapi.json", 0),
    "ops.docs": Budget("GET /docs", 0),
    "ops.docs_redirect": Budget("GET /docs/oauth2-redirect", 0),
}


# -- measuring -----------------------------------------------------------------------


@dataclass
class JobStatements:
    """The statements run inside in-process jobs (tasks named `job:<name>`)."""

    periodic: frozenset[str]
    statements: list[tuple[str, str]] = field(default_factory=list)  # (job, SQL)

    def reset(self) -> None:
        self.statements.clear()

    def _record(self, *args: Any) -> None:
        # The listener's arguments are: connection, cursor, statement, parameters, ...
        task = asyncio.current_task()
        name = task.get_name() if task is not None else ""
        if name.startswith("job:"):
            self.statements.append((name.removeprefix("job:"), str(args[2])))

    @property
    def enqueued(self) -> list[tuple[str, str]]:
        """Those of jobs a request enqueued (not of the periodic schedule)."""
        return [(job, sql) for job, sql in self.statements if job not in self.periodic]


@pytest.fixture
def job_statements(app: FastAPI, client: httpx.AsyncClient) -> Iterator[JobStatements]:
    recorder = JobStatements(frozenset(entry.job.name for entry in PERIODIC))
    engine = app.state.resources.engine.sync_engine
    event.listen(engine, "before_cursor_execute", recorder._record)
    try:
        yield recorder
    finally:
        event.remove(engine, "before_cursor_execute", recorder._record)


class Cost(NamedTuple):
    request: int
    jobs: int


@dataclass(frozen=True)
class Call:
    """The request a case measures, and the status it must get."""

    method: str
    url: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    data: dict[str, str] | None = None
    params: dict[str, str] | None = None
    files: dict[str, Any] | None = None


@dataclass
class Meter:
    client: httpx.AsyncClient
    queries: StatementCounter
    jobs: JobStatements

    async def measure(self, call: Call) -> tuple[httpx.Response, Cost]:
        self.queries.reset()
        self.jobs.reset()
        response = await self.client.request(
            call.method,
            call.url,
            headers=call.headers,
            json=call.json,
            data=call.data,
            params=call.params,
            files=call.files,
        )
        assert response.status_code == call.status, response.text
        every_job = len(self.jobs.statements)
        return response, Cost(self.queries.count - every_job, len(self.jobs.enqueued))

    def explain(self) -> str:
        return "\n".join(
            ["statements:", *self.queries.statements, "of which in jobs:"]
            + [f"{job}: {sql}" for job, sql in self.jobs.statements]
        )


@pytest.fixture
def meter(
    client: httpx.AsyncClient, count_queries: StatementCounter, job_statements: JobStatements
) -> Meter:
    return Meter(client, count_queries, job_statements)


# -- the cases: each sets up its data, then names the request to measure ---------------


@dataclass
class World:
    app: FastAPI
    client: httpx.AsyncClient
    mailbox: Mailbox

    async def user(self, role: Role = Role.USER, **fields: object) -> SignedIn:
        return await signed_in(self.app, self.client, role, **fields)

    async def get_json(self, url: str, who: SignedIn, **params: str) -> Any:
        response = await self.client.get(url, headers=who.headers, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    async def post_json(self, url: str, who: SignedIn | None, body: Any, status: int) -> Any:
        headers = who.headers if who else {}
        response = await self.client.post(url, json=body, headers=headers)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    async def api_key(self, who: SignedIn) -> str:
        created = await self.post_json(KEYS, who, {"name": "budget"}, 201)
        key: str = created["key"]
        return key


Arrange = Callable[[World], Awaitable[Call]]
ARRANGE: dict[str, Arrange] = {}


def arrange(name: str) -> Callable[[Arrange], Arrange]:
    def register(function: Arrange) -> Arrange:
        ARRANGE[name] = function
        return function

    return register


def calls(call: Call, route: str) -> bool:
    """`call` is a request to `route` ("PATCH /api/v1/items/{item_id}")."""
    method, template = route.split(" ")
    pattern = "/".join(
        "[^/]+" if part.startswith("{") else re.escape(part) for part in template.split("/")
    )
    return call.method == method and re.fullmatch(pattern, call.url) is not None


# auth


@arrange("auth.register")
async def _register(world: World) -> Call:
    body = {"email": unique_email("budget"), "password": DEFAULT_PASSWORD}
    return Call("POST", f"{AUTH}/register", 201, json=body)


@arrange("auth.token.password")
async def _token_password(world: World) -> Call:
    user = await make_user(world.app)
    form = {"grant_type": "password", "username": user.email, "password": DEFAULT_PASSWORD}
    return Call("POST", f"{AUTH}/token", 200, data=form)


@arrange("auth.token.refresh")
async def _token_refresh(world: World) -> Call:
    me = await world.user()
    form = {"grant_type": "refresh_token", "refresh_token": me.refresh_token}
    return Call("POST", f"{AUTH}/token", 200, data=form)


@arrange("auth.token.refresh_reused")
async def _token_refresh_reused(world: World) -> Call:
    me = await world.user()
    form = {"grant_type": "refresh_token", "refresh_token": me.refresh_token}
    assert (await world.client.post(f"{AUTH}/token", data=form)).status_code == 200
    return Call("POST", f"{AUTH}/token", 400, data=form)


@arrange("auth.logout")
async def _logout(world: World) -> Call:
    me = await world.user()
    return Call("POST", f"{AUTH}/logout", 204, json={"refresh_token": me.refresh_token})


@arrange("auth.logout_all")
async def _logout_all(world: World) -> Call:
    me = await world.user()
    assert (await login(world.client, me.user.email)).status_code == 200  # a second session
    return Call("POST", f"{AUTH}/logout-all", 204, headers=me.headers)


@arrange("auth.sessions.list")
async def _sessions_list(world: World) -> Call:
    me = await world.user()
    return Call("GET", f"{AUTH}/sessions", 200, headers=me.headers)


@arrange("auth.sessions.list_with_total")
async def _sessions_list_with_total(world: World) -> Call:
    me = await world.user()
    params = {"include_total": "true"}
    return Call("GET", f"{AUTH}/sessions", 200, headers=me.headers, params=params)


@arrange("auth.sessions.delete")
async def _sessions_delete(world: World) -> Call:
    me = await world.user()
    assert (await login(world.client, me.user.email)).status_code == 200
    sessions = (await world.get_json(f"{AUTH}/sessions", me))["data"]
    other = next(entry["id"] for entry in sessions if not entry["current"])
    return Call("DELETE", f"{AUTH}/sessions/{other}", 204, headers=me.headers)


@arrange("auth.verify_email")
async def _verify_email(world: World) -> Call:
    email = unique_email("budget")
    await world.post_json(
        f"{AUTH}/register", None, {"email": email, "password": DEFAULT_PASSWORD}, 201
    )
    token = world.mailbox.last("welcome", email).token
    return Call("POST", f"{AUTH}/verify-email", 204, json={"token": token})


@arrange("auth.verify_email.request")
async def _verify_email_request(world: World) -> Call:
    me = await world.user(is_verified=False)
    return Call("POST", f"{AUTH}/verify-email/request", 202, headers=me.headers)


@arrange("auth.forgot_password.known")
async def _forgot_password_known(world: World) -> Call:
    user = await make_user(world.app)
    return Call("POST", f"{AUTH}/forgot-password", 202, json={"email": user.email})


@arrange("auth.forgot_password.unknown")
async def _forgot_password_unknown(world: World) -> Call:
    return Call("POST", f"{AUTH}/forgot-password", 202, json={"email": unique_email("nobody")})


@arrange("auth.reset_password")
async def _reset_password(world: World) -> Call:
    me = await world.user()
    await world.post_json(f"{AUTH}/forgot-password", None, {"email": me.user.email}, 202)
    token = world.mailbox.last("reset_password", me.user.email).token
    body = {"token": token, "new_password": NEW_PASSWORD}
    return Call("POST", f"{AUTH}/reset-password", 204, json=body)


@arrange("auth.jwks")
async def _jwks(world: World) -> Call:
    return Call("GET", "/.well-known/jwks.json", 200)


# users


@arrange("users.me.read")
async def _me_read(world: World) -> Call:
    me = await world.user()
    return Call("GET", f"{USERS}/me", 200, headers=me.headers)


@arrange("users.me.update_name")
async def _me_update_name(world: World) -> Call:
    me = await world.user()
    return Call("PATCH", f"{USERS}/me", 200, headers=me.headers, json={"full_name": "New Name"})


@arrange("users.me.update_email")
async def _me_update_email(world: World) -> Call:
    me = await world.user()
    body = {"email": unique_email("moved"), "current_password": DEFAULT_PASSWORD}
    return Call("PATCH", f"{USERS}/me", 200, headers=me.headers, json=body)


@arrange("users.me.password")
async def _me_password(world: World) -> Call:
    me = await world.user()
    assert (await login(world.client, me.user.email)).status_code == 200  # ended by it
    body = {"current_password": DEFAULT_PASSWORD, "new_password": NEW_PASSWORD}
    return Call("POST", f"{USERS}/me/password", 204, headers=me.headers, json=body)


@arrange("users.me.delete")
async def _me_delete(world: World) -> Call:
    me = await world.user()
    await make_item(world.app, me.user.id)  # goes with the account
    await _file(world, me)  # the row with it, the bytes by a job
    return Call("DELETE", f"{USERS}/me", 204, headers=me.headers)


@arrange("users.list")
async def _users_list(world: World) -> Call:
    admin = await world.user(Role.ADMIN)
    return Call("GET", USERS, 200, headers=admin.headers)


@arrange("users.list_with_total")
async def _users_list_with_total(world: World) -> Call:
    admin = await world.user(Role.ADMIN)
    return Call("GET", USERS, 200, headers=admin.headers, params={"include_total": "true"})


@arrange("users.create")
async def _users_create(world: World) -> Call:
    admin = await world.user(Role.ADMIN)
    body = {"email": unique_email("created"), "password": DEFAULT_PASSWORD}
    return Call("POST", USERS, 201, headers=admin.headers, json=body)


@arrange("users.read")
async def _users_read(world: World) -> Call:
    admin = await world.user(Role.ADMIN)
    other = await make_user(world.app)
    return Call("GET", f"{USERS}/{other.id}", 200, headers=admin.headers)


@arrange("users.update_name")
async def _users_update_name(world: World) -> Call:
    admin = await world.user(Role.ADMIN)
    other = await make_user(world.app)
    body = {"full_name": "Renamed"}
    return Call("PATCH", f"{USERS}/{other.id}", 200, headers=admin.headers, json=body)


@arrange("users.update_deactivate")
async def _users_update_deactivate(world: World) -> Call:
    admin = await world.user(Role.ADMIN)
    other = await world.user()
    body = {"is_active": False}
    return Call("PATCH", f"{USERS}/{other.user.id}", 200, headers=admin.headers, json=body)


@arrange("users.update_demote_admin")
async def _users_update_demote_admin(world: World) -> Call:
    admin = await world.user(Role.ADMIN)
    other = await world.user(Role.ADMIN)
    body = {"role": "user"}
    return Call("PATCH", f"{USERS}/{other.user.id}", 200, headers=admin.headers, json=body)


@arrange("users.delete")
async def _users_delete(world: World) -> Call:
    admin = await world.user(Role.ADMIN)
    other = await world.user()
    return Call("DELETE", f"{USERS}/{other.user.id}", 204, headers=admin.headers)


# API keys


@arrange("api_keys.create")
async def _keys_create(world: World) -> Call:
    me = await world.user()
    body = {"name": "ci", "expires_in_days": 30}
    return Call("POST", KEYS, 201, headers=me.headers, json=body)


@arrange("api_keys.list")
async def _keys_list(world: World) -> Call:
    me = await world.user()
    await world.api_key(me)
    return Call("GET", KEYS, 200, headers=me.headers)


@arrange("api_keys.delete")
async def _keys_delete(world: World) -> Call:
    me = await world.user()
    created = await world.post_json(KEYS, me, {"name": "doomed"}, 201)
    return Call("DELETE", f"{KEYS}/{created['id']}", 204, headers=me.headers)


@arrange("api_keys.use_first")
async def _keys_use_first(world: World) -> Call:
    key = await world.api_key(await world.user())
    return Call("GET", f"{USERS}/me", 200, headers={"X-API-Key": key})


@arrange("api_keys.use_again")
async def _keys_use_again(world: World) -> Call:
    key = await world.api_key(await world.user())
    first = await world.client.get(f"{USERS}/me", headers={"X-API-Key": key})
    assert first.status_code == 200, first.text
    return Call("GET", f"{USERS}/me", 200, headers={"X-API-Key": key})


@arrange("api_keys.use_unknown")
async def _keys_use_unknown(world: World) -> Call:
    return Call("GET", f"{USERS}/me", 401, headers={"X-API-Key": "keel_notarealkey"})


# items


@arrange("items.list")
async def _items_list(world: World) -> Call:
    me = await world.user()
    await make_items(world.app, me.user.id, 3)
    return Call("GET", ITEMS, 200, headers=me.headers)


@arrange("items.list_with_total")
async def _items_list_with_total(world: World) -> Call:
    me = await world.user()
    await make_items(world.app, me.user.id, 3)
    return Call("GET", ITEMS, 200, headers=me.headers, params={"include_total": "true"})


@arrange("items.create")
async def _items_create(world: World) -> Call:
    me = await world.user()
    return Call("POST", ITEMS, 201, headers=me.headers, json={"title": "new", "tags": ["a"]})


@arrange("items.create_idempotent")
async def _items_create_idempotent(world: World) -> Call:
    me = await world.user()
    headers = {**me.headers, "Idempotency-Key": "budget-1"}
    return Call("POST", ITEMS, 201, headers=headers, json={"title": "keyed"})


@arrange("items.create_replayed")
async def _items_create_replayed(world: World) -> Call:
    me = await world.user()
    headers = {**me.headers, "Idempotency-Key": "budget-1"}
    first = await world.client.post(ITEMS, json={"title": "keyed"}, headers=headers)
    assert first.status_code == 201, first.text
    return Call("POST", ITEMS, 201, headers=headers, json={"title": "keyed"})


@arrange("items.read")
async def _items_read(world: World) -> Call:
    me = await world.user()
    item = await make_item(world.app, me.user.id)
    return Call("GET", f"{ITEMS}/{item.id}", 200, headers=me.headers)


@arrange("items.read_not_modified")
async def _items_read_not_modified(world: World) -> Call:
    me = await world.user()
    item = await make_item(world.app, me.user.id)
    headers = {**me.headers, "If-None-Match": f'"{item.version}"'}
    return Call("GET", f"{ITEMS}/{item.id}", 304, headers=headers)


@arrange("items.replace")
async def _items_replace(world: World) -> Call:
    me = await world.user()
    item = await make_item(world.app, me.user.id)
    headers = {**me.headers, "If-Match": f'"{item.version}"'}
    return Call("PUT", f"{ITEMS}/{item.id}", 200, headers=headers, json={"title": "replaced"})


@arrange("items.update")
async def _items_update(world: World) -> Call:
    me = await world.user()
    item = await make_item(world.app, me.user.id)
    return Call("PATCH", f"{ITEMS}/{item.id}", 200, headers=me.headers, json={"title": "changed"})


@arrange("items.update_stale")
async def _items_update_stale(world: World) -> Call:
    me = await world.user()
    item = await make_item(world.app, me.user.id)
    headers = {**me.headers, "If-Match": f'"{item.version + 1}"'}
    return Call("PATCH", f"{ITEMS}/{item.id}", 412, headers=headers, json={"title": "late"})


@arrange("items.delete")
async def _items_delete(world: World) -> Call:
    me = await world.user()
    item = await make_item(world.app, me.user.id)
    return Call("DELETE", f"{ITEMS}/{item.id}", 204, headers=me.headers)


@arrange("items.export")
async def _items_export(world: World) -> Call:
    me = await world.user()
    await make_items(world.app, me.user.id, 3)
    return Call("GET", f"{ITEMS}/export", 200, headers=me.headers, params={"format": "csv"})


@arrange("items.read_others")
async def _items_read_others(world: World) -> Call:
    me = await world.user()
    item = await make_item(world.app, (await make_user(world.app)).id)
    return Call("GET", f"{ITEMS}/{item.id}", 404, headers=me.headers)


@arrange("items.update_others")
async def _items_update_others(world: World) -> Call:
    me = await world.user()
    item = await make_item(world.app, (await make_user(world.app)).id)
    return Call("PATCH", f"{ITEMS}/{item.id}", 404, headers=me.headers, json={"title": "mine"})


@arrange("items.no_credentials")
async def _items_no_credentials(world: World) -> Call:
    return Call("GET", ITEMS, 401)


@arrange("items.bad_body")
async def _items_bad_body(world: World) -> Call:
    me = await world.user()
    return Call("POST", ITEMS, 422, headers=me.headers, json={"title": "", "owner_id": "x"})


# files


def _png(name: str = "budget.png") -> dict[str, Any]:
    return {"file": (name, PNG, "image/png")}


async def _file(world: World, me: SignedIn) -> dict[str, Any]:
    response = await world.client.post(FILES, files=_png(), headers=me.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


@arrange("files.upload")
async def _files_upload(world: World) -> Call:
    me = await world.user()
    return Call("POST", FILES, 201, headers=me.headers, files=_png())


@arrange("files.upload_idempotent")
async def _files_upload_idempotent(world: World) -> Call:
    me = await world.user()
    headers = {**me.headers, "Idempotency-Key": "budget-file"}
    return Call("POST", FILES, 201, headers=headers, files=_png())


@arrange("files.upload_replayed")
async def _files_upload_replayed(world: World) -> Call:
    me = await world.user()
    headers = {**me.headers, "Idempotency-Key": "budget-file"}
    first = await world.client.post(FILES, files=_png(), headers=headers)
    assert first.status_code == 201, first.text
    return Call("POST", FILES, 201, headers=headers, files=_png())


@arrange("files.upload_refused_type")
async def _files_upload_refused_type(world: World) -> Call:
    me = await world.user()
    files = {"file": ("page.png", b"<html><script>alert(1)</script></html>", "image/png")}
    return Call("POST", FILES, 415, headers=me.headers, files=files)


@arrange("files.list")
async def _files_list(world: World) -> Call:
    me = await world.user()
    for _ in range(3):
        await _file(world, me)
    return Call("GET", FILES, 200, headers=me.headers)


@arrange("files.read")
async def _files_read(world: World) -> Call:
    me = await world.user()
    created = await _file(world, me)
    return Call("GET", f"{FILES}/{created['id']}", 200, headers=me.headers)


@arrange("files.content")
async def _files_content(world: World) -> Call:
    me = await world.user()
    created = await _file(world, me)
    return Call("GET", f"{FILES}/{created['id']}/content", 200, headers=me.headers)


@arrange("files.content_not_modified")
async def _files_content_not_modified(world: World) -> Call:
    me = await world.user()
    created = await _file(world, me)
    headers = {**me.headers, "If-None-Match": f'"{created["sha256"]}"'}
    return Call("GET", f"{FILES}/{created['id']}/content", 304, headers=headers)


@arrange("files.link")
async def _files_link(world: World) -> Call:
    me = await world.user()
    created = await _file(world, me)
    return Call("POST", f"{FILES}/{created['id']}/link", 200, headers=me.headers)


@arrange("files.download_by_link")
async def _files_download_by_link(world: World) -> Call:
    me = await world.user()
    created = await _file(world, me)
    link = await world.post_json(f"{FILES}/{created['id']}/link", me, {"expires_in": 60}, 200)
    url = httpx.URL(link["url"])
    return Call("GET", url.path, 200, params=dict(url.params))


@arrange("files.download_by_bad_link")
async def _files_download_by_bad_link(world: World) -> Call:
    me = await world.user()
    created = await _file(world, me)
    link = await world.post_json(f"{FILES}/{created['id']}/link", me, {"expires_in": 60}, 200)
    url = httpx.URL(link["url"])
    tampered = {**dict(url.params), "signature": "x" + url.params["signature"]}
    return Call("GET", url.path, 403, params=tampered)


@arrange("files.delete")
async def _files_delete(world: World) -> Call:
    me = await world.user()
    created = await _file(world, me)
    return Call("DELETE", f"{FILES}/{created['id']}", 204, headers=me.headers)


# operations


@arrange("ops.health")
async def _health(world: World) -> Call:
    return Call("GET", "/health", 200)


@arrange("ops.ready")
async def _ready(world: World) -> Call:
    return Call("GET", "/ready", 200)


@arrange("ops.metrics")
async def _metrics(world: World) -> Call:
    return Call("GET", "/metrics", 200)


@arrange("ops.openapi")
async def _openapi(world: World) -> Call:
    return Call("GET", "/openapi.json", 200)


@arrange("ops.docs")
async def _docs(world: World) -> Call:
    return Call("GET", "/docs", 200)


@arrange("ops.docs_redirect")
async def _docs_redirect(world: World) -> Call:
    return Call("GET", "/docs/oauth2-redirect", 200)


# -- the tests -----------------------------------------------------------------------


def test_every_case_has_a_budget_and_a_setup() -> None:
    assert set(ARRANGE) == set(BUDGETS)


async def test_every_endpoint_has_a_budget(app: FastAPI) -> None:
    """A new route fails here until it has its budget in the table."""
    schema = app.openapi()
    routes = {
        f"{method.upper()} {path}"
        for path, operations in schema["paths"].items()
        for method in operations
    }
    routes |= {"GET /openapi.json", "GET /docs", "GET /docs/oauth2-redirect"}
    assert routes == {budget.route for budget in BUDGETS.values()}


@pytest.mark.parametrize("name", list(BUDGETS))
async def test_statement_budget(
    name: str, app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox, meter: Meter
) -> None:
    budget = BUDGETS[name]
    call = await ARRANGE[name](World(app, client, mailbox))
    assert calls(call, budget.route)
    mailbox.clear()

    _response, cost = await meter.measure(call)

    assert cost == Cost(budget.request, budget.jobs), meter.explain()
    assert tuple(sent.kind for sent in mailbox.sent) == budget.mails


# Lists: a page costs the same whatever its size (no statement per row).


async def _sessions(world: World, me: SignedIn, count: int) -> None:
    resources = world.app.state.resources
    async with resources.database.transaction() as db:
        user = await find_user(db, me.user.id)
        assert user is not None
        for _ in range(count):
            await start_session(db, resources.issuer, user, Client(ip=None, user_agent="budget"))


async def _keys(world: World, me: SignedIn, count: int) -> None:
    for n in range(count):
        await world.post_json(KEYS, me, {"name": f"key {n}"}, 201)


async def _users(world: World, _me: SignedIn, count: int) -> None:
    for _ in range(count):
        await make_user(world.app)


async def _items(world: World, me: SignedIn, count: int) -> None:
    await make_items(world.app, me.user.id, count)


LISTS: dict[str, tuple[str, Role, Callable[[World, SignedIn, int], Awaitable[None]]]] = {
    "items.list": (ITEMS, Role.USER, _items),
    "users.list": (USERS, Role.ADMIN, _users),
    "auth.sessions.list": (f"{AUTH}/sessions", Role.USER, _sessions),
    "api_keys.list": (KEYS, Role.USER, _keys),
}


@pytest.mark.parametrize("name", list(LISTS))
async def test_a_page_costs_the_same_whatever_its_size(
    name: str, app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox, meter: Meter
) -> None:
    url, role, make_rows = LISTS[name]
    world = World(app, client, mailbox)
    me = await world.user(role)
    await make_rows(world, me, 25)

    costs = {}
    for limit in (1, 20):
        call = Call("GET", url, 200, headers=me.headers, params={"limit": str(limit)})
        response, costs[limit] = await meter.measure(call)
        assert len(response.json()["data"]) == limit
        assert response.json()["next_cursor"]

    assert costs[1] == costs[20] == Cost(BUDGETS[name].request, 0), meter.explain()


async def test_an_export_costs_the_same_whatever_its_size(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox, meter: Meter
) -> None:
    me = await World(app, client, mailbox).user()
    costs = {}
    for more in (1, 24):  # 1 item, then 25
        await make_items(app, me.user.id, more)
        response, costs[more] = await meter.measure(
            Call("GET", f"{ITEMS}/export", 200, headers=me.headers)
        )
        assert len(response.text.splitlines()) == {1: 1, 24: 25}[more]
    assert costs[1] == costs[24] == Cost(BUDGETS["items.export"].request, 0), meter.explain()
