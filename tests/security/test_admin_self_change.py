"""Issue 12, point 14: an admin changing their own account through the admin route,
`PATCH /api/v1/users/{id}`, meets the same rules as `PATCH /users/me`.

- ASVS 5.0 V7.5.1: full re-authentication before changing an attribute that affects
  authentication (the e-mail address, which also receives password resets).
- ASVS 5.0 V6.2.3: a password change needs the current password (the admin route has
  no password field at all: sending one is 422 and changes nothing).
- OWASP API Security Top 10 2023, API2 (Broken Authentication): a stolen admin access
  token or API key must not be enough to take over the admin's account.
"""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from keel.models import Role
from tests.factories.users import DEFAULT_PASSWORD, SignedIn, login, signed_in
from tests.support.assertions import assert_error
from tests.support.mailbox import Mailbox

pytestmark = pytest.mark.anyio

USERS = "/api/v1/users"
NEW_EMAIL = "taken.over@example.com"


async def _api_key(client: httpx.AsyncClient, who: SignedIn) -> str:
    response = await client.post("/api/v1/api-keys", json={"name": "ops"}, headers=who.headers)
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


async def _assert_email_unchanged(
    client: httpx.AsyncClient, admin: SignedIn, mailbox: Mailbox
) -> None:
    reread = await client.get(f"{USERS}/me", headers=admin.headers)
    assert reread.status_code == 200, reread.text
    assert reread.json()["email"] == admin.user.email
    assert reread.json()["is_verified"] is True
    assert mailbox.sent == []
    # The new address is no account: it cannot sign in, the old one still can.
    assert (await login(client, NEW_EMAIL)).status_code == 400
    assert (await login(client, admin.user.email)).status_code == 200


@pytest.mark.parametrize(
    "proof",
    [{}, {"current_password": "not the password"}, {"current_password": ""}],
    ids=["no-password", "wrong-password", "empty-password"],
)
async def test_own_email_change_needs_the_current_password(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox, proof: dict[str, str]
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    response = await client.patch(
        f"{USERS}/{admin.user.id}", json={"email": NEW_EMAIL, **proof}, headers=admin.headers
    )
    assert_error(response, 403, "FORBIDDEN")
    await _assert_email_unchanged(client, admin, mailbox)


async def test_own_email_change_with_an_api_key_is_403_even_with_the_password(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    key = await _api_key(client, admin)
    response = await client.patch(
        f"{USERS}/{admin.user.id}",
        json={"email": NEW_EMAIL, "current_password": DEFAULT_PASSWORD},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert_error(response, 403, "FORBIDDEN")
    await _assert_email_unchanged(client, admin, mailbox)


async def test_a_refused_change_changes_nothing_else_either(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    admin = await signed_in(app, client, Role.ADMIN, full_name="Before")
    response = await client.patch(
        f"{USERS}/{admin.user.id}",
        json={"email": NEW_EMAIL, "full_name": "After", "is_verified": False},
        headers=admin.headers,
    )
    assert_error(response, 403, "FORBIDDEN")
    reread = (await client.get(f"{USERS}/me", headers=admin.headers)).json()
    assert (reread["full_name"], reread["is_verified"]) == ("Before", True)
    await _assert_email_unchanged(client, admin, mailbox)


async def test_own_email_change_with_the_right_password_works(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    response = await client.patch(
        f"{USERS}/{admin.user.id}",
        json={"email": NEW_EMAIL.upper(), "current_password": DEFAULT_PASSWORD},
        headers=admin.headers,
    )
    assert response.status_code == 200, response.text
    assert (response.json()["email"], response.json()["is_verified"]) == (NEW_EMAIL, False)
    assert [(sent.kind, sent.to) for sent in mailbox.sent] == [("verify_email", NEW_EMAIL)]
    assert (await login(client, NEW_EMAIL)).status_code == 200


async def test_the_same_address_in_another_case_is_no_change(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    # As on /users/me: only a real change of address needs the password.
    admin = await signed_in(app, client, Role.ADMIN)
    response = await client.patch(
        f"{USERS}/{admin.user.id}",
        json={"email": admin.user.email.upper(), "full_name": "Renamed"},
        headers=admin.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["email"] == admin.user.email
    assert response.json()["is_verified"] is True
    assert mailbox.sent == []


async def test_other_own_fields_need_no_password(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    response = await client.patch(
        f"{USERS}/{admin.user.id}", json={"full_name": "Still Me"}, headers=admin.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["full_name"] == "Still Me"


async def test_another_users_email_is_still_changed_without_a_password(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    # Administration of others is unchanged (API.md: PATCH /users/{id}).
    admin = await signed_in(app, client, Role.ADMIN)
    other = await signed_in(app, client)
    response = await client.patch(
        f"{USERS}/{other.user.id}", json={"email": NEW_EMAIL}, headers=admin.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["email"] == NEW_EMAIL


@pytest.mark.parametrize(
    "field", ["password", "new_password", "hashed_password"], ids=lambda field: field
)
async def test_the_admin_route_sets_no_password(
    app: FastAPI, client: httpx.AsyncClient, field: str
) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    for target in (admin, await signed_in(app, client)):
        response = await client.patch(
            f"{USERS}/{target.user.id}",
            json={field: "a brand new passphrase 42", "current_password": DEFAULT_PASSWORD},
            headers=admin.headers,
        )
        error = assert_error(response, 422, "VALIDATION_ERROR")
        assert ["body", field] in [detail["loc"] for detail in error["details"]]
        assert (await login(client, target.user.email)).status_code == 200
        assert (
            await login(client, target.user.email, "a brand new passphrase 42")
        ).status_code == 400
