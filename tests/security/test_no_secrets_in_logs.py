"""No secret ever reaches a log line: every sensitive flow runs with all output
captured (structlog and the standard library, at DEBUG), then the capture is searched
for every password, password hash, token, refresh token, API key, e-mail token and
`Authorization` value the flows used.

- ASVS 5.0 V16.2.5 (sensitive data is not logged: credentials never, tokens at most
  hashed or masked) and V14.2.1-style handling of secrets in transit through logs.
- OWASP API Security Top 10 2023 API8 (Security Misconfiguration: verbose logs).
- DESIGN.md "Conventions": passwords, tokens, keys and `Authorization` never appear in
  a log line; README "Background jobs": job arguments named as secrets are redacted.

tests/core/test_logging.py checks the redaction processor on crafted events; here the
real flows run end to end, failed statements included.
"""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from keel.config import Settings
from keel.models import Role, User
from tests.auth.test_token import unverified_claims
from tests.conftest import SettingsFactory
from tests.factories.users import make_user
from tests.security.support import NO_LIMITS, bearer
from tests.support.mailbox import Mailbox

pytestmark = pytest.mark.anyio

PASSWORD = "Quokka-Lantern-4417-first"
SECOND = "Quokka-Lantern-4417-second"
THIRD = "Quokka-Lantern-4417-third"
WRONG = "Quokka-Lantern-4417-wrong"
COMMON = "password123"


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(limit=NO_LIMITS, log={"level": "DEBUG", "format": "json"})


async def _hashes(app: FastAPI) -> set[str]:
    async with app.state.resources.engine.connect() as connection:
        return set((await connection.execute(select(User.hashed_password))).scalars())


async def test_no_secret_of_any_flow_reaches_the_logs(  # noqa: PLR0915 - one run, on purpose
    app: FastAPI,
    client: httpx.AsyncClient,
    mailbox: Mailbox,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets: set[str] = {PASSWORD, SECOND, THIRD, WRONG, COMMON}
    email = "logged.user@example.com"
    auth = "/api/v1/auth"

    # Register (and a refused weak password, and a taken address: a failed INSERT).
    assert (
        await client.post(f"{auth}/register", json={"email": email, "password": COMMON})
    ).status_code == 422
    assert (
        await client.post(f"{auth}/register", json={"email": email, "password": PASSWORD})
    ).status_code == 201
    taken = await client.post(
        f"{auth}/register", json={"email": email.upper(), "password": PASSWORD}
    )
    assert taken.status_code == 409
    hashes = await _hashes(app)
    verification = mailbox.last("welcome", email).token
    assert verification
    secrets |= hashes | {verification}
    assert (
        await client.post(f"{auth}/verify-email", json={"token": verification})
    ).status_code == 204

    # Sign in: right, wrong, unknown; refresh; reuse of a spent refresh token.
    login = {"grant_type": "password", "username": email, "password": PASSWORD}
    first = (await client.post(f"{auth}/token", data=login)).json()
    assert (
        await client.post(f"{auth}/token", data={**login, "password": WRONG})
    ).status_code == 400
    unknown = {**login, "username": "nobody.here@example.com"}
    assert (await client.post(f"{auth}/token", data=unknown)).status_code == 400
    rotated = await client.post(
        f"{auth}/token",
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
    )
    second = rotated.json()
    reused = await client.post(
        f"{auth}/token",
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
    )
    assert reused.status_code == 400
    secrets |= {
        first["access_token"],
        first["refresh_token"],
        second["access_token"],
        second["refresh_token"],
    }

    # Bearer values that fail: malformed, garbage, a refresh token.
    for bad in (
        "Bearer " + first["refresh_token"],
        "Basic " + PASSWORD,
        "Bearer forged." + PASSWORD,
    ):
        assert (
            await client.get("/api/v1/users/me", headers={"Authorization": bad})
        ).status_code == 401
        secrets.add(bad)

    # A fresh session, API keys created, used both ways, and a bad one.
    session = (await client.post(f"{auth}/token", data=login)).json()
    secrets |= {session["access_token"], session["refresh_token"]}
    created = await client.post(
        "/api/v1/api-keys", json={"name": "logged"}, headers=bearer(session["access_token"])
    )
    key = created.json()["key"]
    secrets |= {key, key[len(created.json()["prefix"]) :]}
    assert (await client.get("/api/v1/items", headers=bearer(key))).status_code == 200
    assert (await client.get("/api/v1/items", headers={"X-API-Key": key})).status_code == 200
    assert (await client.get("/api/v1/items", headers={"X-API-Key": key + "x"})).status_code == 401

    # Change the e-mail (with the password) and the password; then forgot and reset.
    headers = bearer(session["access_token"])
    moved = await client.patch(
        "/api/v1/users/me",
        json={"email": "moved.user@example.com", "current_password": PASSWORD},
        headers=headers,
    )
    assert moved.status_code == 200, moved.text
    secrets.add(mailbox.last("verify_email", "moved.user@example.com").token or "")
    changed = await client.post(
        "/api/v1/users/me/password",
        json={"current_password": PASSWORD, "new_password": SECOND},
        headers=headers,
    )
    assert changed.status_code == 204, changed.text
    assert (
        await client.post(f"{auth}/forgot-password", json={"email": "moved.user@example.com"})
    ).status_code == 202
    reset = mailbox.last("reset_password", "moved.user@example.com").token
    assert reset
    secrets.add(reset)
    done = await client.post(f"{auth}/reset-password", json={"token": reset, "new_password": THIRD})
    assert done.status_code == 204, done.text

    # An admin's failed statement (a taken address) and a logout.
    admin = await make_user(app, role=Role.ADMIN, password=SECOND)
    admin_pair = (
        await client.post(
            f"{auth}/token", data={**login, "username": admin.email, "password": SECOND}
        )
    ).json()
    secrets |= {admin_pair["access_token"], admin_pair["refresh_token"]}
    clash = await client.post(
        "/api/v1/users",
        json={"email": "moved.user@example.com", "password": THIRD},
        headers=bearer(admin_pair["access_token"]),
    )
    assert clash.status_code == 409
    assert (
        await client.post(f"{auth}/logout", json={"refresh_token": admin_pair["refresh_token"]})
    ).status_code == 204
    secrets |= await _hashes(app)

    # JWTs also by their signature alone (a log that cut the token would keep it).
    secrets |= {token.rsplit(".", 1)[1] for token in list(secrets) if token.count(".") == 2}
    secrets |= {unverified_claims(first["access_token"])["jti"]}
    secrets.discard("")

    out, err = capfd.readouterr()
    captured = "\n".join(
        [out, err, caplog.text, *(record.getMessage() for record in caplog.records)]
    )
    assert "token_refused" in captured or "refresh_token_reused" in captured  # the flows logged
    leaked = sorted(secret for secret in secrets if secret in captured)
    assert leaked == [], f"secrets in the logs: {[secret[:12] + '...' for secret in leaked]}"
