"""The caller's own account (API.md, "Users": /me), over HTTP.

The helpers at the top are shared with the other modules of this package.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI

from keel.models import Role
from tests.factories.users import DEFAULT_PASSWORD, SignedIn, login, make_user, signed_in
from tests.support.assertions import USER_FIELDS, assert_error
from tests.support.mailbox import Mailbox

pytestmark = pytest.mark.anyio

ME = "/api/v1/users/me"
USERS = "/api/v1/users"
NEW_PASSWORD = "a brand new passphrase 42"


def assert_invalid_grant(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_grant"


def assert_invalid_token(response: httpx.Response) -> None:
    """401 for a credential that was sent but does not (or no longer) work."""
    assert_error(response, 401, "UNAUTHORIZED")
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def detail_locs(error: dict[str, Any]) -> list[list[Any]]:
    return [detail["loc"] for detail in error["details"]]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims(access_token: str) -> dict[str, Any]:
    """The JWT payload, read without checking the signature (the server checks that)."""
    payload = access_token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


async def refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post(
        "/api/v1/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
    )


async def second_session(client: httpx.AsyncClient, who: SignedIn) -> SignedIn:
    """Another password login of the same user: a session of its own."""
    response = await login(client, who.user.email, who.password)
    assert response.status_code == 200, response.text
    body = response.json()
    return SignedIn(who.user, body["access_token"], body["refresh_token"], who.password)


async def create_api_key(client: httpx.AsyncClient, who: SignedIn, **body: Any) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/api-keys", json={"name": "test key", **body}, headers=who.headers
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def read_user_as_admin(
    app: FastAPI, client: httpx.AsyncClient, user_id: object
) -> httpx.Response:
    """GET /users/{id} as a fresh admin: what the service has stored for that user."""
    admin = await signed_in(app, client, Role.ADMIN)
    return await client.get(f"{USERS}/{user_id}", headers=admin.headers)


# GET /me


async def test_get_me_returns_the_callers_account(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client, full_name="Ada Lovelace")
    await signed_in(app, client)  # someone else, who must not be answered instead

    response = await client.get(ME, headers=me.headers)

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == USER_FIELDS
    assert body["id"] == str(me.user.id)
    assert body["email"] == me.user.email
    assert body["full_name"] == "Ada Lovelace"
    assert body["role"] == "user"
    assert body["is_active"] is True
    assert body["is_verified"] is True
    for stamp in ("created_at", "updated_at"):
        assert datetime.fromisoformat(body[stamp]).utcoffset() is not None
    assert "password" not in response.text
    assert "hashed" not in response.text


async def test_get_me_shows_the_role(app: FastAPI, client: httpx.AsyncClient) -> None:
    moderator = await signed_in(app, client, Role.MODERATOR)
    response = await client.get(ME, headers=moderator.headers)
    assert response.status_code == 200, response.text
    assert response.json()["role"] == "moderator"


async def test_get_me_without_credentials_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get(ME)
    assert_error(response, 401, "UNAUTHORIZED")
    assert response.headers["www-authenticate"] == "Bearer"


# PATCH /me: name


async def test_patch_me_changes_the_full_name(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client, full_name="Old Name")

    response = await client.patch(ME, json={"full_name": "New Name"}, headers=me.headers)

    assert response.status_code == 200, response.text
    assert response.json()["full_name"] == "New Name"
    assert response.json()["email"] == me.user.email
    reread = (await client.get(ME, headers=me.headers)).json()
    assert reread["full_name"] == "New Name"


async def test_patch_me_can_clear_the_full_name(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client, full_name="Some Name")
    response = await client.patch(ME, json={"full_name": None}, headers=me.headers)
    assert response.status_code == 200, response.text
    assert (await client.get(ME, headers=me.headers)).json()["full_name"] is None


async def test_patch_me_without_fields_changes_nothing(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client, full_name="Kept")
    response = await client.patch(ME, json={}, headers=me.headers)
    assert response.status_code == 200, response.text
    assert response.json()["full_name"] == "Kept"


async def test_patch_me_full_name_over_200_characters_is_422(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client, full_name="Kept")
    response = await client.patch(ME, json={"full_name": "x" * 201}, headers=me.headers)
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert ["body", "full_name"] in detail_locs(error)
    assert (await client.get(ME, headers=me.headers)).json()["full_name"] == "Kept"


# PATCH /me: mass assignment


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("role", "admin"),
        ("is_active", False),
        ("is_verified", False),
        ("id", "0190f0f0-0000-7000-8000-000000000000"),
        ("hashed_password", "x"),
        ("password", NEW_PASSWORD),
    ],
)
async def test_patch_me_with_a_field_users_may_not_set_is_422_and_changes_nothing(
    app: FastAPI, client: httpx.AsyncClient, field: str, value: object
) -> None:
    me = await signed_in(app, client, full_name="Before")
    before = (await client.get(ME, headers=me.headers)).json()

    response = await client.patch(ME, json={"full_name": "After", field: value}, headers=me.headers)

    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert [(d["loc"], d["type"]) for d in error["details"]] == [
        (["body", field], "extra_forbidden")
    ]
    # Nothing changed, not even the allowed field sent beside the forbidden one.
    assert (await client.get(ME, headers=me.headers)).json() == before
    stored = (await read_user_as_admin(app, client, me.user.id)).json()
    assert stored["role"] == "user"
    assert stored["is_active"] is True
    assert stored["is_verified"] is True
    assert stored["full_name"] == "Before"


async def test_patch_me_role_does_not_reach_the_token(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    response = await client.patch(ME, json={"role": "admin"}, headers=me.headers)
    assert_error(response, 422, "VALIDATION_ERROR")
    again = await login(client, me.user.email)
    assert claims(again.json()["access_token"])["role"] == "user"
    # And the user still may not administer anyone.
    assert_error(await client.get(USERS, headers=me.headers), 403, "FORBIDDEN")


async def test_patch_me_unknown_field_is_422(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    response = await client.patch(ME, json={"nickname": "ace"}, headers=me.headers)
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert detail_locs(error) == [["body", "nickname"]]


# PATCH /me: e-mail


async def test_email_change_without_current_password_is_403(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    me = await signed_in(app, client)
    response = await client.patch(ME, json={"email": "elsewhere@example.com"}, headers=me.headers)
    assert_error(response, 403, "FORBIDDEN")
    reread = (await client.get(ME, headers=me.headers)).json()
    assert reread["email"] == me.user.email
    assert reread["is_verified"] is True
    assert mailbox.sent == []


async def test_email_change_with_a_wrong_current_password_is_403(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    me = await signed_in(app, client, full_name="Unchanged")
    response = await client.patch(
        ME,
        json={
            "email": "elsewhere@example.com",
            "current_password": "not the password",
            "full_name": "Changed",
        },
        headers=me.headers,
    )
    assert_error(response, 403, "FORBIDDEN")
    reread = (await client.get(ME, headers=me.headers)).json()
    assert reread["email"] == me.user.email
    assert reread["full_name"] == "Unchanged"
    assert mailbox.sent == []
    # The new address is not an account: it cannot log in.
    assert_invalid_grant(await login(client, "elsewhere@example.com"))


async def test_email_change_with_the_right_password(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    me = await signed_in(app, client)
    old_email = me.user.email

    response = await client.patch(
        ME,
        json={"email": "New.Address@Example.COM", "current_password": DEFAULT_PASSWORD},
        headers=me.headers,
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["email"] == "new.address@example.com"
    assert body["is_verified"] is False
    reread = (await client.get(ME, headers=me.headers)).json()
    assert reread["email"] == "new.address@example.com"
    assert reread["is_verified"] is False
    # A verification e-mail goes to the new address, and only there.
    assert [(sent.kind, sent.to) for sent in mailbox.sent] == [
        ("verify_email", "new.address@example.com")
    ]
    token = mailbox.last("verify_email", "new.address@example.com").token
    assert token
    # The account signs in with the new address (in any case), no longer with the old.
    assert (await login(client, "NEW.address@example.com")).status_code == 200
    assert_invalid_grant(await login(client, old_email))
    # The token in that e-mail verifies the new address.
    verified = await client.post("/api/v1/auth/verify-email", json={"token": token})
    assert verified.status_code == 204, verified.text
    assert (await client.get(ME, headers=me.headers)).json()["is_verified"] is True


async def test_a_token_sent_to_the_old_address_verifies_nothing(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    me = await signed_in(app, client, is_verified=False)
    requested = await client.post("/api/v1/auth/verify-email/request", headers=me.headers)
    assert requested.status_code == 202, requested.text
    old_token = mailbox.last("verify_email", me.user.email).token

    changed = await client.patch(
        ME,
        json={"email": "fresh@example.com", "current_password": DEFAULT_PASSWORD},
        headers=me.headers,
    )
    assert changed.status_code == 200, changed.text

    stale = await client.post("/api/v1/auth/verify-email", json={"token": old_token})
    assert_error(stale, 400, "BAD_REQUEST")
    assert (await client.get(ME, headers=me.headers)).json()["is_verified"] is False


async def test_email_change_to_a_taken_address_is_409(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    other = await make_user(app, email="taken@example.com")
    me = await signed_in(app, client)

    response = await client.patch(
        ME,
        json={"email": "TAKEN@Example.com", "current_password": DEFAULT_PASSWORD},
        headers=me.headers,
    )

    assert_error(response, 409, "CONFLICT")
    reread = (await client.get(ME, headers=me.headers)).json()
    assert reread["email"] == me.user.email
    assert reread["is_verified"] is True
    assert mailbox.sent == []
    stored_other = (await read_user_as_admin(app, client, other.id)).json()
    assert stored_other["email"] == "taken@example.com"


@pytest.mark.parametrize("contenders", [2, 6])
async def test_users_racing_for_one_address_get_one_200_and_409s(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox, contenders: int
) -> None:
    racers = [await signed_in(app, client) for _ in range(contenders)]
    responses: dict[str, httpx.Response] = {}

    async def take(who: SignedIn) -> None:
        # No assertion here: a failing task would cancel the others mid-transaction.
        responses[who.user.email] = await client.patch(
            ME,
            json={"email": "contested@example.com", "current_password": DEFAULT_PASSWORD},
            headers=who.headers,
        )

    # They pass the password check (hashing in threads) at about the same time, so
    # several may find the address free: the unique index must still answer 409, not 500.
    async with anyio.create_task_group() as group:
        for who in racers:
            group.start_soon(take, who)

    statuses = {email: response.status_code for email, response in responses.items()}
    assert sorted(statuses.values()) == [200] + [409] * (contenders - 1), statuses
    for response in responses.values():
        if response.status_code == 409:
            assert_error(response, 409, "CONFLICT")
    for who in racers:
        email = (await client.get(ME, headers=who.headers)).json()["email"]
        won = statuses[who.user.email] == 200
        assert email == ("contested@example.com" if won else who.user.email)
    assert [sent.to for sent in mailbox.sent] == ["contested@example.com"]


async def test_email_change_with_an_api_key_is_403(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    me = await signed_in(app, client)
    key = (await create_api_key(client, me))["key"]

    response = await client.patch(
        ME,
        json={"email": "keyed@example.com", "current_password": DEFAULT_PASSWORD},
        headers=bearer(key),
    )

    assert_error(response, 403, "FORBIDDEN")
    assert (await client.get(ME, headers=me.headers)).json()["email"] == me.user.email
    assert mailbox.sent == []


async def test_name_change_with_an_api_key_is_allowed(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    key = (await create_api_key(client, me))["key"]
    response = await client.patch(ME, json={"full_name": "By Key"}, headers=bearer(key))
    assert response.status_code == 200, response.text
    assert (await client.get(ME, headers=me.headers)).json()["full_name"] == "By Key"


async def test_invalid_email_is_422(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    response = await client.patch(
        ME,
        json={"email": "not-an-address", "current_password": DEFAULT_PASSWORD},
        headers=me.headers,
    )
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert ["body", "email"] in detail_locs(error)


# POST /me/password


async def test_password_change_with_a_wrong_current_password_is_403(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    me = await signed_in(app, client)
    other = await second_session(client, me)

    response = await client.post(
        f"{ME}/password",
        json={"current_password": "not my password", "new_password": NEW_PASSWORD},
        headers=me.headers,
    )

    assert_error(response, 403, "FORBIDDEN")
    assert (await client.get(ME, headers=other.headers)).status_code == 200
    assert (await login(client, me.user.email)).status_code == 200
    assert_invalid_grant(await login(client, me.user.email, NEW_PASSWORD))
    assert mailbox.sent == []


@pytest.mark.parametrize(
    "new_password",
    [
        pytest.param("Sh0rt!", id="too-short"),
        pytest.param("x" * 129, id="too-long"),
        pytest.param("password123", id="common"),
        pytest.param("Qwertyuiop", id="common-any-case"),
        pytest.param("my Walter-22 secret", id="contains-local-part"),
    ],
)
async def test_password_change_breaking_the_policy_is_422(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox, new_password: str
) -> None:
    me = await signed_in(app, client, email="walter-22@example.com")
    other = await second_session(client, me)

    response = await client.post(
        f"{ME}/password",
        json={"current_password": DEFAULT_PASSWORD, "new_password": new_password},
        headers=me.headers,
    )

    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert ["body", "new_password"] in detail_locs(error)
    # Nothing happened: the old password works, the other session lives, no e-mail.
    assert (await login(client, me.user.email)).status_code == 200
    assert (await client.get(ME, headers=other.headers)).status_code == 200
    assert mailbox.sent == []


async def test_password_change_missing_fields_is_422(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    response = await client.post(
        f"{ME}/password", json={"new_password": NEW_PASSWORD}, headers=me.headers
    )
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert ["body", "current_password"] in detail_locs(error)


async def test_password_change_ends_the_other_sessions_only(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    me = await signed_in(app, client)
    other = await second_session(client, me)
    third = await second_session(client, me)
    bystander = await signed_in(app, client)
    assert (await client.get(ME, headers=other.headers)).status_code == 200

    response = await client.post(
        f"{ME}/password",
        json={"current_password": DEFAULT_PASSWORD, "new_password": NEW_PASSWORD},
        headers=me.headers,
    )

    assert response.status_code == 204, response.text
    assert response.content == b""
    # The other sessions end at once: their access tokens on the very next request...
    assert_invalid_token(await client.get(ME, headers=other.headers))
    assert_invalid_token(await client.get(ME, headers=third.headers))
    # ...and their refresh tokens.
    assert_invalid_grant(await refresh(client, other.refresh_token))
    # The current session goes on, refresh token included.
    assert (await client.get(ME, headers=me.headers)).status_code == 200
    assert (await refresh(client, me.refresh_token)).status_code == 200
    # Someone else's session is untouched.
    assert (await client.get(ME, headers=bystander.headers)).status_code == 200
    # The old password no longer logs in; the new one does.
    assert_invalid_grant(await login(client, me.user.email, DEFAULT_PASSWORD))
    assert (await login(client, me.user.email, NEW_PASSWORD)).status_code == 200
    # And the owner is told.
    assert [(sent.kind, sent.to) for sent in mailbox.sent] == [("password_changed", me.user.email)]


# DELETE /me


async def test_delete_me_removes_the_account_and_its_sessions(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    other = await second_session(client, me)
    bystander = await signed_in(app, client)

    response = await client.delete(ME, headers=me.headers)

    assert response.status_code == 204, response.text
    assert response.content == b""
    assert_invalid_token(await client.get(ME, headers=me.headers))
    assert_invalid_token(await client.get(ME, headers=other.headers))
    # Also where the account is not loaded: the sessions themselves have ended.
    assert_invalid_token(await client.get("/api/v1/api-keys", headers=other.headers))
    assert_invalid_grant(await refresh(client, other.refresh_token))
    assert_invalid_grant(await login(client, me.user.email))
    assert_error(await read_user_as_admin(app, client, me.user.id), 404, "NOT_FOUND")
    assert (await client.get(ME, headers=bystander.headers)).status_code == 200


async def test_deleted_email_can_register_again(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    assert (await client.delete(ME, headers=me.headers)).status_code == 204
    again = await client.post(
        "/api/v1/auth/register", json={"email": me.user.email, "password": NEW_PASSWORD}
    )
    assert again.status_code == 201, again.text
    assert again.json()["id"] != str(me.user.id)


async def test_the_last_active_admin_cannot_delete_themselves(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    # An inactive admin does not count.
    await make_user(app, role=Role.ADMIN, is_active=False)

    response = await client.delete(ME, headers=admin.headers)

    assert_error(response, 409, "CONFLICT")
    reread = await client.get(ME, headers=admin.headers)
    assert reread.status_code == 200
    assert reread.json()["role"] == "admin"
    assert (await login(client, admin.user.email)).status_code == 200


async def test_an_admin_who_is_not_the_last_may_delete_themselves(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    remaining = await signed_in(app, client, Role.ADMIN)

    assert (await client.delete(ME, headers=admin.headers)).status_code == 204

    assert_invalid_token(await client.get(ME, headers=admin.headers))
    gone = await client.get(f"{USERS}/{admin.user.id}", headers=remaining.headers)
    assert_error(gone, 404, "NOT_FOUND")
    # Now the other one is the last.
    assert_error(await client.delete(ME, headers=remaining.headers), 409, "CONFLICT")


async def test_delete_me_with_an_api_key_is_403(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    key = (await create_api_key(client, me))["key"]
    assert_error(await client.delete(ME, headers={"X-API-Key": key}), 403, "FORBIDDEN")
    assert (await client.get(ME, headers=me.headers)).status_code == 200
    assert (await login(client, me.user.email)).status_code == 200
