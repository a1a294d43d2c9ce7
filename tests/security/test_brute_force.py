"""Password guessing is capped per account and per client address, and the address
is the one the connection (or a trusted proxy) shows, never one the client names.

- ASVS 5.0 V6.3.1 (controls against credential stuffing and brute force) and V2.4.1
  (anti-automation).
- ASVS 5.0 V4.1.3 and V15.3.4: headers set by an intermediary (`X-Forwarded-For`) are
  believed only from trusted proxies, and only the hop they appended.
- OWASP API Security Top 10 2023 API2 (Broken Authentication) and API4 (Unrestricted
  Resource Consumption).
- API.md "Errors" (the limits, their defaults, 429 with `Retry-After`) and README's
  `KEEL_SERVER_TRUSTED_PROXIES`.

tests/auth/test_token.py covers the limits' basic shape (the account limit refusing
the right password, the IP limit across accounts behind a proxy, IPv6 /64 budgets);
tests/core/test_client_ip.py the parsing of X-Forwarded-For. This module attacks them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.auth.test_token import assert_oauth_error, assert_rate_limited, password_login
from tests.conftest import SettingsFactory
from tests.factories.users import DEFAULT_PASSWORD, make_user, unique_email
from tests.security.support import started

pytestmark = pytest.mark.anyio

WRONG = "not the password at all"
# Headers an attacker might hope a server reads for the client's address.
SPOOFS: list[dict[str, str]] = [
    {"X-Forwarded-For": "203.0.113.1"},
    {"X-Forwarded-For": "203.0.113.2, 203.0.113.3"},
    {"X-Forwarded-For": "127.0.0.1"},
    {"X-Forwarded-For": "unknown"},
    {"X-Real-IP": "203.0.113.4"},
    {"Forwarded": "for=203.0.113.5"},
    {"True-Client-IP": "203.0.113.6", "CF-Connecting-IP": "203.0.113.7"},
    {"X-Client-IP": "203.0.113.8", "X-Originating-IP": "203.0.113.9"},
]


@contextlib.asynccontextmanager
async def _peer(app: FastAPI, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose connection comes from `address` (the app is already started)."""
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.mark.parametrize("proxies", [[], ["127.0.0.1"]], ids=["no-proxy", "trusted-proxy"])
async def test_the_account_limit_holds_whatever_address_the_guesses_come_from(
    make_settings: SettingsFactory, migrated_database: str, proxies: list[str]
) -> None:
    # A botnet (many addresses), a spoofed header and a trusted proxy's honest one all
    # count against the one account they guess at.
    settings = make_settings(
        limit={"token_account": "4/minute", "token_ip": "1000/minute"},
        server={"trusted_proxies": proxies},
    )
    async with started(settings) as (app, client):
        user = await make_user(app)
        for number, spoof in enumerate(SPOOFS[:4]):
            async with _peer(app, f"198.51.100.{number + 1}") as bot:
                assert_oauth_error(
                    await password_login(bot, user.email, WRONG, spoof), "invalid_grant"
                )
        for variant in (user.email, user.email.upper(), f"  {user.email} "):
            assert_rate_limited(await password_login(client, variant))
        async with _peer(app, "192.0.2.200") as fresh:
            assert_rate_limited(await password_login(fresh, user.email))
        # Another account is not held back.
        other = await make_user(app)
        assert (await password_login(client, other.email)).status_code == 200


async def test_without_trusted_proxies_no_header_buys_a_fresh_ip_budget(
    make_settings: SettingsFactory, migrated_database: str
) -> None:
    settings = make_settings(limit={"token_account": "1000/minute", "token_ip": "3/minute"})
    async with started(settings) as (app, _):
        users = [await make_user(app) for _ in range(3)]
        async with _peer(app, "198.51.100.20") as attacker:
            for user in users:
                response = await password_login(attacker, user.email, WRONG)
                assert_oauth_error(response, "invalid_grant")
            for spoof in SPOOFS:
                assert_rate_limited(await password_login(attacker, unique_email(), WRONG, spoof))
            # The right password of a real account too: the address is spent.
            assert_rate_limited(await password_login(attacker, users[0].email, DEFAULT_PASSWORD))
        async with _peer(app, "198.51.100.21") as neighbour:
            assert (await password_login(neighbour, users[0].email)).status_code == 200


async def test_behind_a_trusted_proxy_only_the_hop_it_appended_counts(
    make_settings: SettingsFactory, migrated_database: str
) -> None:
    # The proxy (127.0.0.1, the test client's peer) appends the address it saw to
    # whatever X-Forwarded-For the client sent: everything left of it is the client's
    # own invention and must not choose the budget.
    settings = make_settings(
        limit={"token_account": "1000/minute", "token_ip": "3/minute"},
        server={"trusted_proxies": ["127.0.0.1"]},
    )
    async with started(settings) as (app, client):
        users = [await make_user(app) for _ in range(3)]
        real = "198.51.100.30"
        for number, user in enumerate(users):
            forwarded = {"X-Forwarded-For": f"203.0.113.{number}, {real}"}
            assert_oauth_error(
                await password_login(client, user.email, WRONG, forwarded), "invalid_grant"
            )
        for invented in ("203.0.113.50", "10.0.0.1, 203.0.113.51", "127.0.0.1", "::1", "garbage"):
            forwarded = {"X-Forwarded-For": f"{invented}, {real}"}
            assert_rate_limited(
                await password_login(client, users[0].email, DEFAULT_PASSWORD, forwarded)
            )
        # Another client behind the same proxy has its own budget.
        other = {"X-Forwarded-For": "198.51.100.31"}
        assert (await password_login(client, users[0].email, headers=other)).status_code == 200


async def test_an_untrusted_peer_cannot_pose_as_the_proxy(
    make_settings: SettingsFactory, migrated_database: str
) -> None:
    # Only the configured proxy's headers are believed: a client connecting directly
    # that sends X-Forwarded-For is counted by its own address.
    settings = make_settings(
        limit={"token_account": "1000/minute", "token_ip": "2/minute"},
        server={"trusted_proxies": ["127.0.0.1"]},
    )
    async with started(settings) as (app, _):
        user = await make_user(app)
        async with _peer(app, "198.51.100.40") as direct:
            for number in range(2):
                spoof = {"X-Forwarded-For": f"203.0.113.{number + 60}"}
                assert_oauth_error(
                    await password_login(direct, user.email, WRONG, spoof), "invalid_grant"
                )
            for spoof in SPOOFS:
                assert_rate_limited(
                    await password_login(direct, user.email, DEFAULT_PASSWORD, spoof)
                )


async def _register(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    body = {"email": unique_email(), "password": DEFAULT_PASSWORD}
    return await client.post("/api/v1/auth/register", json=body, headers=headers)


async def _forgot(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    body = {"email": unique_email()}
    return await client.post("/api/v1/auth/forgot-password", json=body, headers=headers)


@pytest.mark.parametrize(
    ("limit", "send", "ok"),
    [({"register_ip": "2/minute"}, _register, 201), ({"email_ip": "2/minute"}, _forgot, 202)],
    ids=["register", "forgot-password"],
)
async def test_the_other_limited_endpoints_cannot_be_reset_by_headers_either(
    make_settings: SettingsFactory,
    migrated_database: str,
    limit: dict[str, str],
    send: Any,
    ok: int,
) -> None:
    async with (
        started(make_settings(limit=limit)) as (app, _),
        _peer(app, "198.51.100.50") as attacker,
    ):
        for _ in range(2):
            assert (await send(attacker, {})).status_code == ok
        for spoof in SPOOFS:
            assert_rate_limited(await send(attacker, spoof))
