"""Sessions (API.md, "Auth"): listing, ending one, logout and logout-all; an ended
session's access tokens stop on their very next request."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import update

from keel.models import AuthSession
from keel.models.base import utcnow
from tests.auth.test_token import (
    assert_invalid_token,
    assert_oauth_error,
    bearer,
    me,
    refresh,
    serving,
    signed_by_the_app,
    tokens_for,
    unverified_claims,
)
from tests.conftest import SettingsFactory
from tests.factories.users import make_user
from tests.support.assertions import assert_error

pytestmark = pytest.mark.anyio

SESSIONS_URL = "/api/v1/auth/sessions"
SESSION_FIELDS = {"id", "created_at", "last_used_at", "user_agent", "ip", "current"}


def sid(pair: dict[str, Any]) -> str:
    value: str = unverified_claims(pair["access_token"])["sid"]
    return value


async def list_sessions(client: httpx.AsyncClient, pair: dict[str, Any]) -> list[dict[str, Any]]:
    response = await client.get(SESSIONS_URL, headers=bearer(pair["access_token"]))
    assert response.status_code == 200, response.text
    page = response.json()
    assert set(page) == {"data", "next_cursor"}
    assert page["next_cursor"] is None
    data: list[dict[str, Any]] = page["data"]
    return data


async def end_session(
    client: httpx.AsyncClient, pair: dict[str, Any], session_id: str
) -> httpx.Response:
    return await client.delete(f"{SESSIONS_URL}/{session_id}", headers=bearer(pair["access_token"]))


async def logout(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post("/api/v1/auth/logout", json={"refresh_token": refresh_token})


async def test_sessions_are_listed_with_the_current_one_marked(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    stranger = await make_user(app)
    phone = await tokens_for(client, user.email, headers={"User-Agent": "phone/1.0"})
    laptop = await tokens_for(client, user.email, headers={"User-Agent": "laptop/2.0"})
    await tokens_for(client, stranger.email)

    sessions = await list_sessions(client, phone)
    assert len(sessions) == 2
    for item in sessions:
        assert set(item) == SESSION_FIELDS
        assert item["ip"] == "127.0.0.1"
        for stamp in ("created_at", "last_used_at"):
            assert datetime.fromisoformat(item[stamp]).utcoffset() == timedelta(0)
    by_id = {item["id"]: item for item in sessions}
    assert set(by_id) == {sid(phone), sid(laptop)}
    assert by_id[sid(phone)]["current"] is True
    assert by_id[sid(phone)]["user_agent"] == "phone/1.0"
    assert by_id[sid(laptop)]["current"] is False
    assert by_id[sid(laptop)]["user_agent"] == "laptop/2.0"
    # Newest first by default.
    assert [item["id"] for item in sessions] == [sid(laptop), sid(phone)]

    # From the other session, the other one is current.
    seen = {item["id"]: item["current"] for item in await list_sessions(client, laptop)}
    assert seen == {sid(phone): False, sid(laptop): True}


async def test_session_id_stays_the_same_across_refreshes(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    first = await tokens_for(client, user.email)
    [before] = await list_sessions(client, first)
    assert before["id"] == sid(first)

    response = await refresh(client, first["refresh_token"])
    assert response.status_code == 200
    second = response.json()
    assert sid(second) == sid(first)
    [after] = await list_sessions(client, second)
    assert after["id"] == sid(first)
    assert after["current"] is True
    assert after["created_at"] == before["created_at"]
    assert datetime.fromisoformat(after["last_used_at"]) >= datetime.fromisoformat(
        before["last_used_at"]
    )


async def test_total_is_given_when_asked(app: FastAPI, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    pair = await tokens_for(client, user.email)
    await tokens_for(client, user.email)
    response = await client.get(
        SESSIONS_URL, params={"include_total": "true"}, headers=bearer(pair["access_token"])
    )
    assert response.status_code == 200, response.text
    assert response.json()["total"] == 2


async def test_ended_sessions_are_not_listed(app: FastAPI, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    kept = await tokens_for(client, user.email)
    gone = await tokens_for(client, user.email)
    assert (await logout(client, gone["refresh_token"])).status_code == 204
    assert [item["id"] for item in await list_sessions(client, kept)] == [sid(kept)]


async def test_session_routes_need_credentials(client: httpx.AsyncClient) -> None:
    for response in (
        await client.get(SESSIONS_URL),
        await client.delete(f"{SESSIONS_URL}/{uuid.uuid4()}"),
        await client.post("/api/v1/auth/logout-all"),
    ):
        assert_error(response, 401, "UNAUTHORIZED")
        assert response.headers["www-authenticate"] == "Bearer"


async def test_ending_another_session_stops_its_access_token_at_once(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    mine = await tokens_for(client, user.email)
    other = await tokens_for(client, user.email)
    assert (await me(client, other["access_token"])).status_code == 200

    response = await end_session(client, mine, sid(other))
    assert response.status_code == 204, response.text
    assert response.content == b""

    assert_invalid_token(await me(client, other["access_token"]))
    assert_oauth_error(await refresh(client, other["refresh_token"]), "invalid_grant")
    assert (await me(client, mine["access_token"])).status_code == 200


async def test_another_users_session_is_404(app: FastAPI, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    stranger = await make_user(app)
    mine = await tokens_for(client, user.email)
    theirs = await tokens_for(client, stranger.email)
    assert_error(await end_session(client, mine, sid(theirs)), 404, "NOT_FOUND")
    # Nothing happened to it.
    assert (await me(client, theirs["access_token"])).status_code == 200
    assert (await refresh(client, theirs["refresh_token"])).status_code == 200


async def test_unknown_session_is_404(app: FastAPI, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    pair = await tokens_for(client, user.email)
    assert_error(await end_session(client, pair, str(uuid.uuid4())), 404, "NOT_FOUND")


async def test_session_id_that_is_not_a_uuid_is_422(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    pair = await tokens_for(client, user.email)
    assert_error(await end_session(client, pair, "not-a-uuid"), 422, "VALIDATION_ERROR")


async def test_the_current_session_may_be_ended(app: FastAPI, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    pair = await tokens_for(client, user.email)
    other = await tokens_for(client, user.email)
    assert (await end_session(client, pair, sid(pair))).status_code == 204
    assert_invalid_token(await me(client, pair["access_token"]))
    assert_invalid_token(await client.get(SESSIONS_URL, headers=bearer(pair["access_token"])))
    assert_oauth_error(await refresh(client, pair["refresh_token"]), "invalid_grant")
    assert (await me(client, other["access_token"])).status_code == 200


async def test_logout_ends_that_session_without_credentials(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    pair = await tokens_for(client, user.email)
    other = await tokens_for(client, user.email)

    response = await logout(client, pair["refresh_token"])
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert_invalid_token(await me(client, pair["access_token"]))
    assert_oauth_error(await refresh(client, pair["refresh_token"]), "invalid_grant")
    # Only that session.
    assert (await me(client, other["access_token"])).status_code == 200


async def test_logout_ends_the_family_from_its_newest_token(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    first = await tokens_for(client, user.email)
    second = (await refresh(client, first["refresh_token"])).json()
    assert (await logout(client, second["refresh_token"])).status_code == 204
    for pair in (first, second):
        assert_invalid_token(await me(client, pair["access_token"]))


async def test_logout_with_an_unknown_or_spent_token_is_204(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    assert (await logout(client, "no-such-token")).status_code == 204
    user = await make_user(app)
    first = await tokens_for(client, user.email)
    assert (await refresh(client, first["refresh_token"])).status_code == 200
    # Spent by the refresh above.
    assert (await logout(client, first["refresh_token"])).status_code == 204
    # And once more, after the session ended.
    assert (await logout(client, first["refresh_token"])).status_code == 204


async def test_logout_body_is_validated(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/auth/logout", json={})
    assert_error(response, 422, "VALIDATION_ERROR")
    extra = await client.post("/api/v1/auth/logout", json={"refresh_token": "x", "all": True})
    assert_error(extra, 422, "VALIDATION_ERROR")


async def test_logout_all_ends_every_session_at_once(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    stranger = await make_user(app)
    first = await tokens_for(client, user.email)
    second = await tokens_for(client, user.email)
    theirs = await tokens_for(client, stranger.email)

    response = await client.post("/api/v1/auth/logout-all", headers=bearer(first["access_token"]))
    assert response.status_code == 204, response.text
    assert response.content == b""

    for pair in (first, second):
        assert_invalid_token(await me(client, pair["access_token"]))
        assert_oauth_error(await refresh(client, pair["refresh_token"]), "invalid_grant")
    # Another user is untouched, and this one may sign in again.
    assert (await me(client, theirs["access_token"])).status_code == 200
    fresh = await tokens_for(client, user.email)
    assert (await me(client, fresh["access_token"])).status_code == 200
    assert [item["id"] for item in await list_sessions(client, fresh)] == [sid(fresh)]


async def test_api_key_cannot_manage_sessions(app: FastAPI, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    pair = await tokens_for(client, user.email)
    created = await client.post(
        "/api/v1/api-keys", json={"name": "ci"}, headers=bearer(pair["access_token"])
    )
    assert created.status_code == 201, created.text
    key = {"X-API-Key": created.json()["key"]}
    assert_error(await client.get(SESSIONS_URL, headers=key), 403, "FORBIDDEN")
    assert_error(await client.delete(f"{SESSIONS_URL}/{sid(pair)}", headers=key), 403, "FORBIDDEN")
    assert_error(await client.post("/api/v1/auth/logout-all", headers=key), 403, "FORBIDDEN")
    # The session is still alive.
    assert (await me(client, pair["access_token"])).status_code == 200


async def _token_of_a_session_ended_seconds_ago(
    app: FastAPI, client: httpx.AsyncClient, make_settings: SettingsFactory, ended_ago: int
) -> httpx.Response:
    """A session that ended `ended_ago` seconds ago, and an access token issued the
    second before it ended, presented to a freshly started app (30 s tokens): as if
    that much time had passed since the end."""
    user = await make_user(app)
    claims = unverified_claims((await tokens_for(client, user.email))["access_token"])
    ended_at = utcnow() - timedelta(seconds=ended_ago)
    async with app.state.resources.sessionmaker() as session:
        await session.execute(
            update(AuthSession)
            .where(AuthSession.id == uuid.UUID(claims["sid"]))
            .values(ended_at=ended_at, end_reason="logout")
        )
        await session.commit()
    issued = int(ended_at.timestamp()) - 1
    async with serving(make_settings(auth={"access_token_ttl_seconds": 30})) as (later, http):
        token = signed_by_the_app(later, {**claims, "iat": issued, "exp": issued + 30})
        return await me(http, token)


async def test_token_of_a_recently_ended_session_is_refused_after_a_restart(
    app: FastAPI, client: httpx.AsyncClient, make_settings: SettingsFactory
) -> None:
    # The token has 10 s left to live: the end is remembered.
    assert_invalid_token(
        await _token_of_a_session_ended_seconds_ago(app, client, make_settings, ended_ago=20)
    )


async def test_ended_session_stays_ended_through_the_expiry_leeway(
    app: FastAPI, client: httpx.AsyncClient, make_settings: SettingsFactory
) -> None:
    # Expired 6 s ago, so still inside the verifier's 10 s leeway; its session ended 36 s
    # ago, longer than a token lives, so the record of the end is gone. The token must
    # not come back to life.
    assert_invalid_token(
        await _token_of_a_session_ended_seconds_ago(app, client, make_settings, ended_ago=35)
    )
