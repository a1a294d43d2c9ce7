"""POST /api/v1/auth/register (API.md, "Auth"): the account, its verification e-mail,
the password policy, closed registration, races and the rate limit."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from keel.models import User
from tests.auth.test_token import (
    assert_rate_headers,
    assert_rate_limited,
    bearer,
    serving,
    tokens_for,
)
from tests.conftest import SettingsFactory
from tests.factories.users import DEFAULT_PASSWORD, make_user, unique_email
from tests.support.assertions import USER_FIELDS, assert_error
from tests.support.mailbox import Mailbox, install_mailbox

pytestmark = pytest.mark.anyio

REGISTER_URL = "/api/v1/auth/register"


async def register(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post(REGISTER_URL, json=body)


async def count_users(app: FastAPI, email: str) -> int:
    async with app.state.resources.sessionmaker() as session:
        count = await session.scalar(select(func.count()).where(User.email == email.lower()))
    return int(count or 0)


def assert_policy_refusal(response: httpx.Response, field: str = "password") -> None:
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert [detail["loc"] for detail in error["details"]] == [["body", field]]
    for detail in error["details"]:
        assert set(detail) == {"loc", "msg", "type"}


async def test_register_returns_the_user(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    email = unique_email("Mixed.Case").replace("example.com", "Example.COM")
    response = await register(client, email=email, password=DEFAULT_PASSWORD, full_name="Ann")
    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json"
    user = response.json()
    assert set(user) == USER_FIELDS
    assert user["email"] == email.lower()
    assert user["full_name"] == "Ann"
    assert user["role"] == "user"
    assert user["is_active"] is True
    assert user["is_verified"] is False
    assert uuid.UUID(user["id"]).version == 7
    for stamp in ("created_at", "updated_at"):
        assert datetime.fromisoformat(user[stamp]).utcoffset() == timedelta(0)
    assert "password" not in response.text
    assert DEFAULT_PASSWORD not in response.text
    limit, remaining, _ = assert_rate_headers(response)
    assert (limit, remaining) == (20, 19)
    # Only the one e-mail, to the stored address.
    assert [(sent.kind, sent.to) for sent in mailbox.sent] == [("welcome", email.lower())]


async def test_full_name_is_optional(client: httpx.AsyncClient) -> None:
    response = await register(client, email=unique_email(), password=DEFAULT_PASSWORD)
    assert response.status_code == 201, response.text
    assert response.json()["full_name"] is None


async def test_verification_email_verifies_the_account(
    client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    email = unique_email()
    assert (await register(client, email=email, password=DEFAULT_PASSWORD)).status_code == 201
    token = mailbox.last("welcome", to=email).token
    assert token

    pair = await tokens_for(client, email)
    before = await client.get("/api/v1/users/me", headers=bearer(pair["access_token"]))
    assert before.json()["is_verified"] is False

    verified = await client.post("/api/v1/auth/verify-email", json={"token": token})
    assert verified.status_code == 204, verified.text
    assert verified.content == b""
    after = await client.get("/api/v1/users/me", headers=bearer(pair["access_token"]))
    assert after.status_code == 200
    assert after.json()["is_verified"] is True


async def test_the_new_account_can_sign_in(client: httpx.AsyncClient) -> None:
    email = unique_email()
    created = await register(client, email=email.upper(), password=DEFAULT_PASSWORD)
    assert created.status_code == 201
    pair = await tokens_for(client, email)
    me = await client.get("/api/v1/users/me", headers=bearer(pair["access_token"]))
    assert me.json()["id"] == created.json()["id"]


async def test_taken_email_in_another_case_is_409(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    email = unique_email()
    assert (await register(client, email=email, password=DEFAULT_PASSWORD)).status_code == 201
    mailbox.clear()
    response = await register(client, email=email.upper(), password="another good passphrase")
    assert_error(response, 409, "CONFLICT")
    assert await count_users(app, email) == 1
    assert mailbox.sent == []


async def test_email_of_an_existing_user_is_409(app: FastAPI, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    response = await register(client, email=user.email.title(), password=DEFAULT_PASSWORD)
    assert_error(response, 409, "CONFLICT")


@pytest.mark.parametrize(
    "password",
    [
        "x7#kQ2!p",  # 8 characters
        "a" * 60 + "x7#kQ2!p" * 8 + "b" * 4,  # 128 characters
        "日本語のパスワード"[:8],  # 8 characters, 24 bytes
        "é" * 100,  # 100 characters, 200 bytes
        "ü" * 128,  # 128 characters, 256 bytes
    ],
    ids=["8", "128", "8-multibyte", "100-multibyte", "128-multibyte"],
)
async def test_password_lengths_accepted(client: httpx.AsyncClient, password: str) -> None:
    response = await register(client, email=unique_email(), password=password)
    assert response.status_code == 201, response.text
    pair = await tokens_for(client, response.json()["email"], password)
    assert pair["access_token"]


@pytest.mark.parametrize(
    "password",
    ["x7#kQ2!", "a" * 61 + "x7#kQ2!p" * 8 + "b" * 4, "日本語のパスワ", "ü" * 129, ""],
    ids=["7", "129", "7-multibyte-21-bytes", "129-multibyte", "empty"],
)
async def test_password_lengths_refused(
    app: FastAPI, client: httpx.AsyncClient, password: str
) -> None:
    email = unique_email()
    assert_policy_refusal(await register(client, email=email, password=password))
    assert await count_users(app, email) == 0


async def test_password_containing_the_local_part_is_refused(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    email = unique_email("Ann.Lee")
    local = email.split("@")[0]
    for password in (f"my {local.upper()} secret", f"{local.lower()}!2025", f"x{local.title()}x"):
        assert_policy_refusal(await register(client, email=email, password=password))
    assert await count_users(app, email) == 0


async def test_short_local_part_is_not_checked(client: httpx.AsyncClient) -> None:
    # "al" has fewer than three characters: a password containing it is fine.
    email = f"al@{uuid.uuid4().hex[:8]}.example.com"
    response = await register(client, email=email, password="al-wins-the-race")
    assert response.status_code == 201, response.text


async def test_three_character_local_part_is_checked(client: httpx.AsyncClient) -> None:
    email = f"bob@{uuid.uuid4().hex[:8]}.example.com"
    assert_policy_refusal(await register(client, email=email, password="my friend BOB rocks"))


@pytest.mark.parametrize("password", ["password123", "PASSWORD123", "1234567890123", "qwertyuiop"])
async def test_common_password_is_refused(client: httpx.AsyncClient, password: str) -> None:
    assert_policy_refusal(await register(client, email=unique_email(), password=password))


async def test_role_is_not_accepted(app: FastAPI, client: httpx.AsyncClient) -> None:
    email = unique_email()
    response = await register(client, email=email, password=DEFAULT_PASSWORD, role="admin")
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert [(detail["loc"], detail["type"]) for detail in error["details"]] == [
        (["body", "role"], "extra_forbidden")
    ]
    assert await count_users(app, email) == 0


@pytest.mark.parametrize(
    "email", ["not-an-email", "a@", "@example.com", "ann@@example.com", "ann example@x.io", ""]
)
async def test_malformed_email_is_422(client: httpx.AsyncClient, email: str) -> None:
    error = assert_error(
        await register(client, email=email, password=DEFAULT_PASSWORD), 422, "VALIDATION_ERROR"
    )
    assert ["body", "email"] in [detail["loc"] for detail in error["details"]]


async def test_missing_fields_are_422(client: httpx.AsyncClient) -> None:
    error = assert_error(await register(client), 422, "VALIDATION_ERROR")
    locs = [detail["loc"] for detail in error["details"]]
    assert ["body", "email"] in locs
    assert ["body", "password"] in locs


async def test_closed_registration_is_403(
    client: httpx.AsyncClient, make_settings: SettingsFactory
) -> None:
    email = unique_email()
    async with serving(make_settings(auth={"registration_open": False})) as (app, closed):
        mailbox = install_mailbox(app)
        response = await register(closed, email=email, password=DEFAULT_PASSWORD)
        assert_error(response, 403, "FORBIDDEN")
        assert await count_users(app, email) == 0
        assert mailbox.sent == []


async def test_racing_registrations_of_one_email(
    app: FastAPI, client: httpx.AsyncClient, mailbox: Mailbox
) -> None:
    email = unique_email()
    responses = await asyncio.gather(
        *(
            register(client, email=email if n % 2 else email.upper(), password=DEFAULT_PASSWORD)
            for n in range(8)
        )
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] + [409] * 7, [response.text for response in responses]
    for response in responses:
        if response.status_code == 409:
            assert_error(response, 409, "CONFLICT")
    assert await count_users(app, email) == 1
    assert [sent.to for sent in mailbox.sent] == [email]


async def test_register_rate_limit(
    client: httpx.AsyncClient, make_settings: SettingsFactory
) -> None:
    async with serving(make_settings(limit={"register_ip": "3/minute"})) as (_app, limited):
        for remaining in (2, 1, 0):
            response = await register(limited, email=unique_email(), password=DEFAULT_PASSWORD)
            assert response.status_code == 201, response.text
            limit, left, reset = assert_rate_headers(response)
            assert (limit, left) == (3, remaining)
            assert 0 < reset <= 60
        email = unique_email()
        response = await register(limited, email=email, password=DEFAULT_PASSWORD)
        assert_rate_limited(response)
        assert int(response.headers["retry-after"]) <= 60
        assert int(response.headers["ratelimit-limit"]) == 3


async def test_refusals_after_the_limit_carry_the_rate_headers(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    # "on every response" (API.md, Errors): a 409 or a policy 422 counts and says so.
    user = await make_user(app)
    conflict = await register(client, email=user.email, password=DEFAULT_PASSWORD)
    assert_error(conflict, 409, "CONFLICT")
    assert assert_rate_headers(conflict)[:2] == (20, 19)
    policy = await register(client, email=unique_email(), password="password123")
    assert_policy_refusal(policy)
    assert assert_rate_headers(policy)[:2] == (20, 18)


async def test_malformed_body_carries_the_rate_headers(client: httpx.AsyncClient) -> None:
    response = await register(client, email="not-an-email", password=DEFAULT_PASSWORD)
    assert_error(response, 422, "VALIDATION_ERROR")
    assert assert_rate_headers(response)[:2] == (20, 19)
