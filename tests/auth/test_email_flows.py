"""E-mail verification and password reset (API.md, "Auth"): single-use, expiring
tokens, the same answer for known and unknown addresses, and rate limits."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update

from keel.core.security.opaque import token_hash
from keel.models import OneTimeToken, User
from keel.models.base import utcnow
from tests.auth.test_token import (
    assert_invalid_token,
    assert_oauth_error,
    assert_rate_headers,
    assert_rate_limited,
    bearer,
    me,
    password_login,
    refresh,
    serving,
    tokens_for,
)
from tests.conftest import SettingsFactory
from tests.factories.users import DEFAULT_PASSWORD, make_user, unique_email
from tests.support.assertions import assert_error
from tests.support.mailbox import Mailbox, install_mailbox

pytestmark = pytest.mark.anyio

VERIFY_URL = "/api/v1/auth/verify-email"
VERIFY_REQUEST_URL = "/api/v1/auth/verify-email/request"
FORGOT_URL = "/api/v1/auth/forgot-password"
RESET_URL = "/api/v1/auth/reset-password"
NEW_PASSWORD = "a brand new passphrase"


async def verify(client: httpx.AsyncClient, token: str | None) -> httpx.Response:
    return await client.post(VERIFY_URL, json={"token": token})


async def forgot(client: httpx.AsyncClient, email: str) -> httpx.Response:
    return await client.post(FORGOT_URL, json={"email": email})


async def reset(client: httpx.AsyncClient, token: str | None, password: str) -> httpx.Response:
    return await client.post(RESET_URL, json={"token": token, "new_password": password})


async def is_verified(app: FastAPI, email: str) -> bool:
    async with app.state.resources.sessionmaker() as session:
        value = await session.scalar(select(User.is_verified).where(User.email == email))
    assert value is not None
    return bool(value)


async def expire(app: FastAPI, token: str) -> None:
    async with app.state.resources.sessionmaker() as session:
        result = await session.execute(
            update(OneTimeToken)
            .where(OneTimeToken.token_hash == token_hash(token))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        assert result.rowcount == 1
        await session.commit()


def assert_bad_token(response: httpx.Response) -> None:
    assert_error(response, 400, "BAD_REQUEST")


async def registered(client: httpx.AsyncClient, mailbox: Mailbox) -> tuple[str, str]:
    """A new account through /register: its e-mail and its verification token."""
    email = unique_email()
    response = await client.post(
        "/api/v1/auth/register", json={"email": email, "password": DEFAULT_PASSWORD}
    )
    assert response.status_code == 201, response.text
    token = mailbox.last("welcome", to=email).token
    assert token
    return email, token


async def reset_token(client: httpx.AsyncClient, mailbox: Mailbox, email: str) -> str:
    assert (await forgot(client, email)).status_code == 202
    token = mailbox.last("reset_password", to=email).token
    assert token
    return token


# E-mail verification.


async def test_verification_token_is_single_use(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    email, token = await registered(client, mailbox)
    assert not await is_verified(app, email)
    first = await verify(client, token)
    assert first.status_code == 204, first.text
    assert first.content == b""
    assert await is_verified(app, email)
    assert_bad_token(await verify(client, token))


@pytest.mark.parametrize("token", ["", "not-a-token", "x" * 300])
async def test_bad_verification_token_is_400(client: httpx.AsyncClient, token: str) -> None:
    assert_bad_token(await verify(client, token))


async def test_verification_body_is_validated(client: httpx.AsyncClient) -> None:
    assert_error(await client.post(VERIFY_URL, json={}), 422, "VALIDATION_ERROR")
    assert_error(await verify(client, None), 422, "VALIDATION_ERROR")


async def test_expired_verification_token_is_400(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    email, token = await registered(client, mailbox)
    await expire(app, token)
    assert_bad_token(await verify(client, token))
    assert not await is_verified(app, email)


async def test_token_for_an_old_email_does_not_verify_the_new_one(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    email, old_token = await registered(client, mailbox)
    pair = await tokens_for(client, email)
    new_email = unique_email("moved")
    changed = await client.patch(
        "/api/v1/users/me",
        json={"email": new_email, "current_password": DEFAULT_PASSWORD},
        headers=bearer(pair["access_token"]),
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["email"] == new_email
    assert changed.json()["is_verified"] is False

    assert_bad_token(await verify(client, old_token))
    assert not await is_verified(app, new_email)
    # The new address's own e-mail does verify it.
    new_token = mailbox.last("verify_email", to=new_email).token
    assert new_token
    assert (await verify(client, new_token)).status_code == 204
    assert await is_verified(app, new_email)


async def test_verification_request_sends_a_new_email(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    user = await make_user(app, is_verified=False)
    pair = await tokens_for(client, user.email)
    response = await client.post(VERIFY_REQUEST_URL, headers=bearer(pair["access_token"]))
    assert response.status_code == 202, response.text
    assert_rate_headers(response)
    sent = mailbox.last("verify_email", to=user.email)
    assert sent.token
    assert (await verify(client, sent.token)).status_code == 204
    assert await is_verified(app, user.email)


async def test_verification_request_needs_a_sign_in(client: httpx.AsyncClient) -> None:
    response = await client.post(VERIFY_REQUEST_URL)
    assert_error(response, 401, "UNAUTHORIZED")
    assert response.headers["www-authenticate"] == "Bearer"


async def test_verification_request_rate_limit(
    client: httpx.AsyncClient, make_settings: SettingsFactory
) -> None:
    async with serving(make_settings(limit={"email_ip": "2/minute"})) as (app, limited):
        user = await make_user(app, is_verified=False)
        pair = await tokens_for(limited, user.email)
        for remaining in (1, 0):
            response = await limited.post(VERIFY_REQUEST_URL, headers=bearer(pair["access_token"]))
            assert response.status_code == 202, response.text
            assert assert_rate_headers(response)[:2] == (2, remaining)
        assert_rate_limited(
            await limited.post(VERIFY_REQUEST_URL, headers=bearer(pair["access_token"]))
        )


# Forgotten passwords.


async def test_forgot_password_answers_the_same_for_unknown_addresses(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    user = await make_user(app)
    known = await forgot(client, user.email)
    unknown = await forgot(client, unique_email("nobody"))
    assert known.status_code == unknown.status_code == 202
    assert known.content == unknown.content
    assert known.headers["content-type"] == unknown.headers["content-type"]
    assert_rate_headers(known)
    # The work ran as a background task; with httpx's ASGITransport it has finished by
    # the time the response is returned. Only the known address gets an e-mail.
    assert [(sent.kind, sent.to) for sent in mailbox.sent] == [("reset_password", user.email)]


async def test_forgot_password_matches_any_case(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    user = await make_user(app)
    assert (await forgot(client, user.email.upper())).status_code == 202
    assert mailbox.last("reset_password", to=user.email).token


async def test_forgot_password_for_an_inactive_user_sends_nothing(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    user = await make_user(app, is_active=False)
    assert (await forgot(client, user.email)).status_code == 202
    assert mailbox.sent == []


async def test_forgot_password_body_is_validated(client: httpx.AsyncClient) -> None:
    assert_error(await forgot(client, "not-an-email"), 422, "VALIDATION_ERROR")
    extra = await client.post(FORGOT_URL, json={"email": unique_email(), "admin": True})
    assert_error(extra, 422, "VALIDATION_ERROR")


async def test_forgot_password_rate_limit(
    client: httpx.AsyncClient, make_settings: SettingsFactory
) -> None:
    async with serving(make_settings(limit={"email_ip": "2/minute"})) as (app, limited):
        mailbox = install_mailbox(app)
        user = await make_user(app)
        for remaining in (1, 0):
            response = await forgot(limited, unique_email("nobody"))
            assert response.status_code == 202, response.text
            assert assert_rate_headers(response)[:2] == (2, remaining)
        assert_rate_limited(await forgot(limited, user.email))
        assert mailbox.sent == []


# Password reset.


async def test_reset_password_ends_every_session(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    user = await make_user(app)
    first = await tokens_for(client, user.email)
    second = await tokens_for(client, user.email)
    token = await reset_token(client, mailbox, user.email)

    response = await reset(client, token, NEW_PASSWORD)
    assert response.status_code == 204, response.text
    assert response.content == b""

    for pair in (first, second):
        assert_invalid_token(await me(client, pair["access_token"]))
        assert_oauth_error(await refresh(client, pair["refresh_token"]), "invalid_grant")
    assert_oauth_error(await password_login(client, user.email), "invalid_grant")
    fresh = await tokens_for(client, user.email, NEW_PASSWORD)
    assert (await me(client, fresh["access_token"])).status_code == 200
    assert mailbox.last("password_changed", to=user.email)


async def test_reset_token_is_single_use(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    user = await make_user(app)
    token = await reset_token(client, mailbox, user.email)
    assert (await reset(client, token, NEW_PASSWORD)).status_code == 204
    assert_bad_token(await reset(client, token, "yet another passphrase"))
    assert (await password_login(client, user.email, NEW_PASSWORD)).status_code == 200
    assert_oauth_error(
        await password_login(client, user.email, "yet another passphrase"), "invalid_grant"
    )


async def test_expired_reset_token_is_400(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    user = await make_user(app)
    pair = await tokens_for(client, user.email)
    token = await reset_token(client, mailbox, user.email)
    await expire(app, token)
    assert_bad_token(await reset(client, token, NEW_PASSWORD))
    # Nothing changed: the old password and the session still work.
    assert (await password_login(client, user.email)).status_code == 200
    assert (await me(client, pair["access_token"])).status_code == 200


@pytest.mark.parametrize("token", ["", "not-a-token"])
async def test_bad_reset_token_is_400(client: httpx.AsyncClient, token: str) -> None:
    assert_bad_token(await reset(client, token, NEW_PASSWORD))


async def test_tokens_serve_only_their_purpose(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    email, verification = await registered(client, mailbox)
    reset_for_email = await reset_token(client, mailbox, email)
    assert_bad_token(await reset(client, verification, NEW_PASSWORD))
    assert_bad_token(await verify(client, reset_for_email))
    # Neither was spent by the wrong use.
    assert (await verify(client, verification)).status_code == 204
    assert (await reset(client, reset_for_email, NEW_PASSWORD)).status_code == 204


@pytest.mark.parametrize(
    "password",
    ["short", "password123", "x" * 129],
    ids=["too-short", "common", "too-long"],
)
async def test_policy_violation_is_422_and_leaves_the_token_unspent(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox, password: str
) -> None:
    user = await make_user(app)
    pair = await tokens_for(client, user.email)
    token = await reset_token(client, mailbox, user.email)

    error = assert_error(await reset(client, token, password), 422, "VALIDATION_ERROR")
    assert [detail["loc"] for detail in error["details"]] == [["body", "new_password"]]
    # The whole request rolled back: nothing changed, and the token still works.
    assert (await me(client, pair["access_token"])).status_code == 200
    assert (await password_login(client, user.email)).status_code == 200
    assert not any(sent.kind == "password_changed" for sent in mailbox.sent)

    assert (await reset(client, token, NEW_PASSWORD)).status_code == 204
    assert (await password_login(client, user.email, NEW_PASSWORD)).status_code == 200


async def test_new_password_containing_the_local_part_is_422(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    user = await make_user(app)
    token = await reset_token(client, mailbox, user.email)
    local = user.email.split("@")[0]
    error: dict[str, Any] = assert_error(
        await reset(client, token, f"my {local.upper()} secret"), 422, "VALIDATION_ERROR"
    )
    assert error["details"][0]["type"] == "password_policy"
