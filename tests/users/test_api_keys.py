"""API keys (API.md, "API keys"): managing them, signing in with them, and what they
may not do."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from keel.models import ApiKey, Role
from keel.resources import Resources
from tests.factories.users import DEFAULT_PASSWORD, SignedIn, login, signed_in
from tests.support.assertions import assert_error
from tests.support.mailbox import Mailbox
from tests.users.test_me import (
    ME,
    NEW_PASSWORD,
    USERS,
    assert_invalid_token,
    bearer,
    claims,
    create_api_key,
    detail_locs,
)

pytestmark = pytest.mark.anyio

KEYS = "/api/v1/api-keys"
KEY_FIELDS = {"id", "name", "prefix", "created_at", "expires_at", "last_used_at"}


async def list_keys(client: httpx.AsyncClient, who: SignedIn, **params: Any) -> dict[str, Any]:
    response = await client.get(KEYS, params=params, headers=who.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def set_expiry(app: FastAPI, key_id: str, expires_at: datetime) -> None:
    resources: Resources = app.state.resources
    async with resources.sessionmaker() as session:
        await session.execute(
            update(ApiKey).where(ApiKey.id == uuid.UUID(key_id)).values(expires_at=expires_at)
        )
        await session.commit()


def near(stamp: str, expected: datetime, tolerance: timedelta = timedelta(minutes=1)) -> bool:
    value = datetime.fromisoformat(stamp)
    assert value.utcoffset() is not None
    return abs(value - expected) <= tolerance


# POST /api-keys


async def test_create_returns_the_key_once(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)

    response = await client.post(KEYS, json={"name": "ci"}, headers=me.headers)

    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == KEY_FIELDS | {"key"}
    uuid.UUID(body["id"])
    assert body["name"] == "ci"
    assert body["prefix"].startswith("keel_")
    assert len(body["prefix"]) > len("keel_")
    assert body["key"].startswith(body["prefix"])
    assert len(body["key"]) > len(body["prefix"]) + 20
    assert near(body["created_at"], datetime.now(UTC))
    assert body["expires_at"] is None
    assert body["last_used_at"] is None
    # Each key is new.
    second = (await create_api_key(client, me, name="ci"))["key"]
    assert second != body["key"]


@pytest.mark.parametrize("days", [1, 30, 3650])
async def test_create_with_an_expiry(app: FastAPI, client: httpx.AsyncClient, days: int) -> None:
    me = await signed_in(app, client)
    body = await create_api_key(client, me, expires_in_days=days)
    assert near(body["expires_at"], datetime.now(UTC) + timedelta(days=days))
    assert (await client.get(ME, headers=bearer(body["key"]))).status_code == 200


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        pytest.param({"name": "k", "expires_in_days": 0}, "expires_in_days", id="days-0"),
        pytest.param({"name": "k", "expires_in_days": 3651}, "expires_in_days", id="days-3651"),
        pytest.param({"name": "k", "expires_in_days": -5}, "expires_in_days", id="days-negative"),
        pytest.param({"name": "k", "expires_in_days": "soon"}, "expires_in_days", id="days-text"),
        pytest.param({"name": "k", "scopes": ["admin"]}, "scopes", id="unknown-field"),
        pytest.param({"name": "k", "user_id": str(uuid.uuid4())}, "user_id", id="user-id"),
        pytest.param({"name": ""}, "name", id="empty-name"),
        pytest.param({"name": "n" * 101}, "name", id="long-name"),
        pytest.param({}, "name", id="no-name"),
    ],
)
async def test_create_with_an_invalid_body_is_422(
    app: FastAPI, client: httpx.AsyncClient, body: dict[str, Any], loc: str
) -> None:
    me = await signed_in(app, client)
    response = await client.post(KEYS, json=body, headers=me.headers)
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert ["body", loc] in detail_locs(error)
    assert (await list_keys(client, me))["data"] == []


# GET /api-keys


async def test_list_shows_the_callers_keys_without_the_key(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    other = await signed_in(app, client)
    first = await create_api_key(client, me, name="first")
    second = await create_api_key(client, me, name="second", expires_in_days=7)
    await create_api_key(client, other, name="not mine")

    response = await client.get(KEYS, headers=me.headers)

    assert response.status_code == 200, response.text
    page = response.json()
    assert page["next_cursor"] is None
    assert "total" not in page
    # Newest first by default.
    assert [key["id"] for key in page["data"]] == [second["id"], first["id"]]
    for key, created in zip(page["data"], (second, first), strict=True):
        assert set(key) == KEY_FIELDS
        assert key == {field: created[field] for field in KEY_FIELDS}
    assert first["key"] not in response.text
    assert second["key"] not in response.text


async def test_list_pages(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    ids = [(await create_api_key(client, me, name=f"k{n}"))["id"] for n in range(5)]

    first = await list_keys(client, me, limit=2, sort="created_at", include_total="true")
    assert first["total"] == 5
    seen = [key["id"] for key in first["data"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        page = await list_keys(client, me, limit=2, sort="created_at", cursor=cursor)
        seen.extend(key["id"] for key in page["data"])
        cursor = page["next_cursor"]
    assert seen == ids
    response = await client.get(KEYS, params={"sort": "name"}, headers=me.headers)
    assert_error(response, 422, "VALIDATION_ERROR")
    response = await client.get(KEYS, params={"cursor": "bogus"}, headers=me.headers)
    assert_error(response, 400, "BAD_REQUEST")


# Signing in with a key


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
async def test_a_key_acts_as_its_owner(
    app: FastAPI, client: httpx.AsyncClient, header: str
) -> None:
    me = await signed_in(app, client, full_name="Key Owner")
    await signed_in(app, client)
    key = (await create_api_key(client, me))["key"]
    headers = bearer(key) if header == "Authorization" else {"X-API-Key": key}

    response = await client.get(ME, headers=headers)

    assert response.status_code == 200, response.text
    assert response.json()["id"] == str(me.user.id)
    assert response.json()["full_name"] == "Key Owner"


async def test_a_key_has_its_owners_current_role(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    moderator = await signed_in(app, client, Role.MODERATOR)
    user = await signed_in(app, client)
    moderator_key = (await create_api_key(client, moderator))["key"]
    user_key = (await create_api_key(client, user))["key"]

    assert (await client.get(USERS, headers=bearer(moderator_key))).status_code == 200
    assert_error(await client.get(USERS, headers=bearer(user_key)), 403, "FORBIDDEN")

    demoted = await client.patch(
        f"{USERS}/{moderator.user.id}", json={"role": "user"}, headers=admin.headers
    )
    assert demoted.status_code == 200, demoted.text
    # A key carries no role of its own: the owner's demotion applies at once.
    assert_error(await client.get(USERS, headers=bearer(moderator_key)), 403, "FORBIDDEN")


async def test_last_used_at_is_set_on_first_use(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    created = await create_api_key(client, me)
    assert (await list_keys(client, me))["data"][0]["last_used_at"] is None

    assert (await client.get(ME, headers={"X-API-Key": created["key"]})).status_code == 200

    used = (await list_keys(client, me))["data"][0]["last_used_at"]
    assert used is not None
    assert near(used, datetime.now(UTC))
    # Within the minute, another use does not move it.
    assert (await client.get(ME, headers=bearer(created["key"]))).status_code == 200
    assert (await list_keys(client, me))["data"][0]["last_used_at"] == used


async def test_last_used_at_is_refreshed_after_a_minute(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    created = await create_api_key(client, me)
    long_ago = datetime.now(UTC) - timedelta(minutes=2)
    resources: Resources = app.state.resources
    async with resources.sessionmaker() as session:
        await session.execute(
            update(ApiKey)
            .where(ApiKey.id == uuid.UUID(created["id"]))
            .values(last_used_at=long_ago)
        )
        await session.commit()
    stale = (await list_keys(client, me))["data"][0]["last_used_at"]
    assert near(stale, long_ago, timedelta(seconds=1))

    assert (await client.get(ME, headers=bearer(created["key"]))).status_code == 200

    assert near((await list_keys(client, me))["data"][0]["last_used_at"], datetime.now(UTC))


async def test_a_failed_sign_in_does_not_touch_last_used_at(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    created = await create_api_key(client, me)
    assert_invalid_token(await client.get(ME, headers=bearer(created["key"] + "x")))
    assert (await list_keys(client, me))["data"][0]["last_used_at"] is None


# DELETE one key by id


async def test_delete_revokes_the_key_at_once(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    doomed = await create_api_key(client, me, name="doomed")
    kept = await create_api_key(client, me, name="kept")
    assert (await client.get(ME, headers=bearer(doomed["key"]))).status_code == 200

    response = await client.delete(f"{KEYS}/{doomed['id']}", headers=me.headers)

    assert response.status_code == 204, response.text
    assert response.content == b""
    assert_invalid_token(await client.get(ME, headers=bearer(doomed["key"])))
    assert_invalid_token(await client.get(ME, headers={"X-API-Key": doomed["key"]}))
    assert (await client.get(ME, headers=bearer(kept["key"]))).status_code == 200
    assert [key["id"] for key in (await list_keys(client, me))["data"]] == [kept["id"]]
    again = await client.delete(f"{KEYS}/{doomed['id']}", headers=me.headers)
    assert_error(again, 404, "NOT_FOUND")


async def test_deleting_someone_elses_key_is_404(app: FastAPI, client: httpx.AsyncClient) -> None:
    owner = await signed_in(app, client)
    # Even an admin manages only their own keys here.
    intruder = await signed_in(app, client, Role.ADMIN)
    key = await create_api_key(client, owner)

    response = await client.delete(f"{KEYS}/{key['id']}", headers=intruder.headers)

    assert_error(response, 404, "NOT_FOUND")
    assert (await client.get(ME, headers=bearer(key["key"]))).status_code == 200
    assert [k["id"] for k in (await list_keys(client, owner))["data"]] == [key["id"]]
    assert (await list_keys(client, intruder))["data"] == []


async def test_delete_unknown_or_malformed_id(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    assert_error(
        await client.delete(f"{KEYS}/{uuid.uuid4()}", headers=me.headers), 404, "NOT_FOUND"
    )
    error = assert_error(
        await client.delete(f"{KEYS}/not-a-uuid", headers=me.headers), 422, "VALIDATION_ERROR"
    )
    assert ["path", "key_id"] in detail_locs(error)


# Keys that no longer work


async def test_an_expired_key_is_401(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    key = await create_api_key(client, me, expires_in_days=1)
    assert (await client.get(ME, headers=bearer(key["key"]))).status_code == 200

    await set_expiry(app, key["id"], datetime.now(UTC) - timedelta(seconds=1))

    assert_invalid_token(await client.get(ME, headers=bearer(key["key"])))
    assert_invalid_token(await client.get(ME, headers={"X-API-Key": key["key"]}))
    # Still listed, with its expiry, for its owner to see and delete.
    listed = (await list_keys(client, me))["data"]
    assert [k["id"] for k in listed] == [key["id"]]
    assert datetime.fromisoformat(listed[0]["expires_at"]) < datetime.now(UTC)


async def test_a_key_expiring_later_still_works(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    key = await create_api_key(client, me)
    await set_expiry(app, key["id"], datetime.now(UTC) + timedelta(minutes=5))
    assert (await client.get(ME, headers=bearer(key["key"]))).status_code == 200


async def test_a_deactivated_owners_key_is_401(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    # A moderator, so that the key also reaches a route that does not load the user.
    owner = await signed_in(app, client, Role.MODERATOR)
    key = (await create_api_key(client, owner))["key"]
    assert (await client.get(ME, headers=bearer(key))).status_code == 200
    assert (await client.get(USERS, headers=bearer(key))).status_code == 200

    response = await client.patch(
        f"{USERS}/{owner.user.id}", json={"is_active": False}, headers=admin.headers
    )
    assert response.status_code == 200, response.text

    assert_invalid_token(await client.get(ME, headers=bearer(key)))
    assert_invalid_token(await client.get(ME, headers={"X-API-Key": key}))
    assert_invalid_token(await client.get(USERS, headers=bearer(key)))
    # Reactivated, the key works again (it was never revoked).
    response = await client.patch(
        f"{USERS}/{owner.user.id}", json={"is_active": True}, headers=admin.headers
    )
    assert response.status_code == 200, response.text
    assert (await client.get(ME, headers=bearer(key))).status_code == 200


async def test_a_deleted_owners_key_is_401(app: FastAPI, client: httpx.AsyncClient) -> None:
    owner = await signed_in(app, client, Role.MODERATOR)
    key = (await create_api_key(client, owner))["key"]
    assert (await client.delete(ME, headers=owner.headers)).status_code == 204
    assert_invalid_token(await client.get(ME, headers=bearer(key)))
    assert_invalid_token(await client.get(USERS, headers=bearer(key)))


# What a key may not do


def _password_change(who: SignedIn, _key: dict[str, Any]) -> dict[str, Any]:
    return {"current_password": who.password, "new_password": NEW_PASSWORD}


def _email_change(who: SignedIn, _key: dict[str, Any]) -> dict[str, Any]:
    return {"email": "changed-by-key@example.com", "current_password": who.password}


def _key_creation(_who: SignedIn, _key: dict[str, Any]) -> dict[str, Any]:
    return {"name": "made by a key"}


KEPT_FROM_KEYS = [
    pytest.param("POST", KEYS, _key_creation, id="POST /api-keys"),
    pytest.param("GET", KEYS, None, id="GET /api-keys"),
    pytest.param("DELETE", KEYS + "/{key_id}", None, id="DELETE /api-keys/id"),
    pytest.param("POST", "/api/v1/auth/logout-all", None, id="POST /auth/logout-all"),
    pytest.param("GET", "/api/v1/auth/sessions", None, id="GET /auth/sessions"),
    pytest.param("DELETE", "/api/v1/auth/sessions/{sid}", None, id="DELETE /auth/sessions/id"),
    pytest.param(
        "POST", "/api/v1/auth/verify-email/request", None, id="POST /auth/verify-email/request"
    ),
    pytest.param("POST", ME + "/password", _password_change, id="POST /users/me/password"),
    pytest.param("DELETE", ME, None, id="DELETE /users/me"),
    pytest.param("PATCH", ME, _email_change, id="PATCH /users/me email"),
]


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
@pytest.mark.parametrize(("method", "path", "make_body"), KEPT_FROM_KEYS)
async def test_a_key_may_not_do_what_needs_a_password_sign_in(
    app: FastAPI,
    client: httpx.AsyncClient,
    mailbox: Mailbox,
    method: str,
    path: str,
    make_body: Any,
    header: str,
) -> None:
    # Unverified, so that a verification request would really send an e-mail.
    me = await signed_in(app, client, is_verified=False)
    key = await create_api_key(client, me)
    headers = bearer(key["key"]) if header == "Authorization" else {"X-API-Key": key["key"]}
    url = path.format(key_id=key["id"], sid=claims(me.access_token)["sid"])
    body = make_body(me, key) if make_body else None

    response = await client.request(method, url, json=body, headers=headers)

    assert_error(response, 403, "FORBIDDEN")
    # Nothing happened: the key, the session, the password and the account are intact,
    # and no e-mail went out.
    assert (await client.get(ME, headers=headers)).status_code == 200
    account = await client.get(ME, headers=me.headers)
    assert account.status_code == 200
    assert account.json()["email"] == me.user.email
    assert (await login(client, me.user.email, DEFAULT_PASSWORD)).status_code == 200
    assert [k["name"] for k in (await list_keys(client, me))["data"]] == ["test key"]
    assert mailbox.sent == []


async def test_the_same_actions_work_with_a_password_sign_in(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """The 403s above come from the key, not from the requests themselves."""
    me = await signed_in(app, client, is_verified=False)
    key = await create_api_key(client, me)
    assert (await client.get(KEYS, headers=me.headers)).status_code == 200
    assert (await client.get("/api/v1/auth/sessions", headers=me.headers)).status_code == 200
    request = await client.post("/api/v1/auth/verify-email/request", headers=me.headers)
    assert request.status_code == 202, request.text
    assert (await client.delete(f"{KEYS}/{key['id']}", headers=me.headers)).status_code == 204


# Credentials


async def test_a_missing_credential_is_401_with_a_bare_challenge(client: httpx.AsyncClient) -> None:
    for method, url in [("GET", ME), ("GET", KEYS), ("POST", KEYS)]:
        response = await client.request(
            method, url, json={"name": "x"} if method == "POST" else None
        )
        assert_error(response, 401, "UNAUTHORIZED")
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Authorization": "Bearer not-a-token"}, id="bad-token"),
        pytest.param({"Authorization": "Bearer keel_notarealkey"}, id="unknown-key"),
        pytest.param({"X-API-Key": "keel_notarealkey"}, id="unknown-x-api-key"),
        pytest.param({"X-API-Key": "garbage"}, id="garbage-x-api-key"),
        pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, id="other-scheme"),
        pytest.param({"Authorization": "Bearer "}, id="empty-bearer"),
    ],
)
async def test_a_bad_credential_is_401_invalid_token(
    app: FastAPI, client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    await signed_in(app, client)
    assert_invalid_token(await client.get(ME, headers=headers))
