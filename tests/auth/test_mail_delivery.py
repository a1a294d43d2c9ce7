"""The e-mail flows end to end: a real SMTP server receives what the jobs send.

Run twice: with the in-process runner, and with Dramatiq on Redis and a `keel worker`
in a process of its own (when KEEL_TEST_REDIS_URL is set, as in CI).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel.main import create_app
from tests.conftest import SettingsFactory
from tests.factories.users import DEFAULT_PASSWORD, login, unique_email
from tests.support.apps import client_for
from tests.support.mailbox import token_in
from tests.support.servers import HOST, clean_env, free_port, work
from tests.support.smtp import Inbox, text_part, wait_for_mail

pytestmark = pytest.mark.anyio

NEW_PASSWORD = "an entirely new passphrase"


@dataclass
class Delivery:
    http: httpx.AsyncClient
    inbox: Inbox

    async def token_from(self, to: str, subject: str) -> str:
        message = await wait_for_mail(self.inbox, to, subject)
        token = token_in(text_part(message))
        assert token, text_part(message)
        return token


@pytest.fixture(params=["inprocess", "dramatiq"])
async def delivery(
    request: pytest.FixtureRequest,
    make_settings: SettingsFactory,
    smtp_server: tuple[Inbox, int],
    client: httpx.AsyncClient,  # empties the tables after the test
    tmp_path: Path,
) -> AsyncIterator[Delivery]:
    inbox, port = smtp_server
    mail: dict[str, Any] = {
        "backend": "smtp",
        "from": "Keel <no-reply@keel.test>",
        "smtp_host": HOST,
        "smtp_port": port,
        "smtp_security": "none",
    }
    if request.param == "inprocess":
        app: FastAPI = create_app(make_settings(mail=mail))
        async with client_for(app) as http:
            yield Delivery(http, inbox)
        return

    request.getfixturevalue("requires_redis")
    settings = make_settings(mail=mail, jobs={"backend": "dramatiq"})
    assert settings.redis.url
    env = clean_env(
        KEEL_ENV="test",
        KEEL_DATA_DIR=str(tmp_path),
        KEEL_DATABASE_URL=settings.database_url,
        KEEL_REDIS_URL=settings.redis.url,
        KEEL_REDIS_KEY_PREFIX=settings.redis.key_prefix,
        KEEL_MAIL_BACKEND="smtp",
        KEEL_MAIL_FROM="Keel <no-reply@keel.test>",
        KEEL_MAIL_SMTP_HOST=HOST,
        KEEL_MAIL_SMTP_PORT=str(port),
        KEEL_MAIL_SMTP_SECURITY="none",
        KEEL_LOG_FORMAT="json",
        KEEL_JOBS_WORKER_METRICS_PORT=str(free_port()),
    )
    with work(tmp_path, env):
        async with client_for(create_app(settings)) as http:
            yield Delivery(http, inbox)


async def test_registration_email_verifies_the_account(delivery: Delivery) -> None:
    http = delivery.http
    email = unique_email()
    registered = await http.post(
        "/api/v1/auth/register", json={"email": email, "password": DEFAULT_PASSWORD}
    )
    assert registered.status_code == 201, registered.text

    token = await delivery.token_from(email, "Welcome to Keel")
    verified = await http.post("/api/v1/auth/verify-email", json={"token": token})
    assert verified.status_code == 204, verified.text

    signed_in = await login(http, email)
    assert signed_in.status_code == 200
    headers = {"Authorization": f"Bearer {signed_in.json()['access_token']}"}
    me = await http.get("/api/v1/users/me", headers=headers)
    assert me.json()["is_verified"] is True


async def test_forgot_reset_ends_old_sessions(delivery: Delivery) -> None:
    http = delivery.http
    email = unique_email()
    registered = await http.post(
        "/api/v1/auth/register", json={"email": email, "password": DEFAULT_PASSWORD}
    )
    assert registered.status_code == 201, registered.text
    old = (await login(http, email)).json()

    forgot = await http.post("/api/v1/auth/forgot-password", json={"email": email.upper()})
    assert forgot.status_code == 202, forgot.text
    token = await delivery.token_from(email, "Reset your Keel password")
    reset = await http.post(
        "/api/v1/auth/reset-password", json={"token": token, "new_password": NEW_PASSWORD}
    )
    assert reset.status_code == 204, reset.text

    # Every session from before the reset is over, the access token included.
    me = await http.get(
        "/api/v1/users/me", headers={"Authorization": f"Bearer {old['access_token']}"}
    )
    assert me.status_code == 401
    refreshed = await http.post(
        "/api/v1/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": old["refresh_token"]},
    )
    assert refreshed.status_code == 400
    assert refreshed.json()["error"] == "invalid_grant"
    assert (await login(http, email)).status_code == 400
    assert (await login(http, email, NEW_PASSWORD)).status_code == 200
    await wait_for_mail(delivery.inbox, email, "Your Keel password was changed")
