"""The token endpoint (API.md, "The token endpoint") and the access tokens it issues,
through HTTP: grants, RFC 6749 errors, rotation and reuse detection, rate limits, the
hash upgrade, and the attacks an access token must withstand."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import select, update

from keel.config import Settings
from keel.core.security.opaque import token_hash
from keel.main import create_app
from keel.models import RefreshToken, User
from keel.models.base import utcnow
from tests.conftest import SettingsFactory
from tests.factories.users import DEFAULT_PASSWORD, make_user, unique_email
from tests.support.apps import client_for
from tests.support.assertions import assert_error

pytestmark = pytest.mark.anyio

TOKEN_URL = "/api/v1/auth/token"
ME_URL = "/api/v1/users/me"
RATE_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")
INVALID_TOKEN = 'Bearer error="invalid_token"'


# Helpers, also used by the other auth test modules.


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """A second app with its own settings, on the test database (the `client` fixture,
    which such tests also request, empties the tables afterwards)."""
    app = create_app(settings)
    async with client_for(app) as client:
        yield app, client


async def password_login(
    client: httpx.AsyncClient,
    email: str,
    password: str = DEFAULT_PASSWORD,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await client.post(
        TOKEN_URL,
        data={"grant_type": "password", "username": email, "password": password},
        headers=headers,
    )


async def tokens_for(
    client: httpx.AsyncClient,
    email: str,
    password: str = DEFAULT_PASSWORD,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    response = await password_login(client, email, password, headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post(
        TOKEN_URL, data={"grant_type": "refresh_token", "refresh_token": refresh_token}
    )


async def me(client: httpx.AsyncClient, access_token: str) -> httpx.Response:
    return await client.get(ME_URL, headers={"Authorization": f"Bearer {access_token}"})


def bearer(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


def assert_oauth_error(response: httpx.Response, error: str) -> dict[str, Any]:
    """RFC 6749 §5.2: 400, exactly {error, error_description}, never cached."""
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error
    assert isinstance(body["error_description"], str)
    assert body["error_description"]
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    return body


def assert_rate_headers(response: httpx.Response) -> tuple[int, int, int]:
    """RateLimit-Limit/Remaining/Reset, each a non-negative integer."""
    values = []
    for name in RATE_HEADERS:
        text = response.headers[name]
        assert text.isdigit(), (name, text)
        values.append(int(text))
    return values[0], values[1], values[2]


def assert_rate_limited(response: httpx.Response) -> None:
    assert_error(response, 429, "RATE_LIMITED")
    assert response.headers["retry-after"].isdigit()
    assert int(response.headers["retry-after"]) >= 1
    _, remaining, _ = assert_rate_headers(response)
    assert remaining == 0


def assert_invalid_token(response: httpx.Response) -> None:
    assert_error(response, 401, "UNAUTHORIZED")
    assert response.headers["www-authenticate"] == INVALID_TOKEN


async def expire_refresh_token(app: FastAPI, refresh_token: str) -> None:
    async with app.state.resources.sessionmaker() as session:
        result = await session.execute(
            update(RefreshToken)
            .where(RefreshToken.token_hash == token_hash(refresh_token))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        assert result.rowcount == 1
        await session.commit()


def unverified_claims(access_token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(access_token, options={"verify_signature": False})
    return claims


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def hand_made(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A JWT put together by hand: unsigned (`secret` None) or HS256 with `secret`."""
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    if secret is None:
        return f"{signing_input}."
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def signed_by_the_app(app: FastAPI, claims: dict[str, Any], **header: Any) -> str:
    """An ES256 token signed with the app's own signing key."""
    key = app.state.resources.keys.signing_key
    headers = {"kid": key.kid, "typ": "at+jwt", **header}
    return jwt.encode(claims, key.private_key, algorithm="ES256", headers=headers)


# The password grant.


async def test_password_grant_issues_a_token_pair(app: FastAPI, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    response = await password_login(client, user.email)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    assert_rate_headers(response)
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    assert isinstance(body["refresh_token"], str)
    assert len(body["refresh_token"]) >= 32
    assert body["refresh_token"] != body["access_token"]
    me_response = await me(client, body["access_token"])
    assert me_response.status_code == 200
    assert me_response.json()["id"] == str(user.id)


async def test_grant_type_may_be_omitted(app: FastAPI, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    # What Swagger UI's OAuth2 password form sends.
    response = await client.post(
        TOKEN_URL, data={"username": user.email, "password": DEFAULT_PASSWORD}
    )
    assert response.status_code == 200, response.text
    assert (await me(client, response.json()["access_token"])).status_code == 200


async def test_username_is_matched_without_regard_to_case(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    response = await password_login(client, user.email.upper())
    assert response.status_code == 200, response.text


async def test_access_token_header_and_claims(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    user = await make_user(app)
    pair = await tokens_for(client, user.email)
    access = pair["access_token"]

    header = jwt.get_unverified_header(access)
    assert header["alg"] == "ES256"
    assert header["typ"] == "at+jwt"
    jwks = (await client.get("/.well-known/jwks.json")).json()
    by_kid = {key["kid"]: key for key in jwks["keys"]}
    assert header["kid"] in by_kid
    published = by_kid[header["kid"]]
    assert (published["kty"], published["crv"], published["alg"]) == ("EC", "P-256", "ES256")
    assert "d" not in published  # the public half only

    claims = unverified_claims(access)
    assert set(claims) == {"iss", "aud", "sub", "sid", "exp", "iat", "jti", "role"}
    assert claims["iss"] == settings.public_base_url == "http://localhost:8000"
    assert claims["aud"] == "keel-api"
    assert claims["sub"] == str(user.id)
    uuid.UUID(claims["sid"])
    assert claims["role"] == "user"
    assert isinstance(claims["jti"], str)
    assert claims["jti"]
    assert claims["exp"] - claims["iat"] == 900
    assert abs(claims["iat"] - time.time()) < 60

    # The published key verifies it, with the pinned algorithm, issuer and audience.
    public_key = jwt.PyJWK(published).key
    verified = jwt.decode(
        access, public_key, algorithms=["ES256"], audience="keel-api", issuer=claims["iss"]
    )
    assert verified == claims

    # Every login has its own session and token id.
    again = unverified_claims((await tokens_for(client, user.email))["access_token"])
    assert again["sid"] != claims["sid"]
    assert again["jti"] != claims["jti"]


async def test_unknown_email_and_wrong_password_answer_identically(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    unknown = await password_login(client, unique_email("nobody"))
    wrong = await password_login(client, user.email, "not the right password")
    assert_oauth_error(unknown, "invalid_grant")
    assert_oauth_error(wrong, "invalid_grant")
    assert unknown.content == wrong.content
    assert_rate_headers(wrong)


async def test_inactive_user_is_invalid_grant(app: FastAPI, client: httpx.AsyncClient) -> None:
    user = await make_user(app, is_active=False)
    inactive = await password_login(client, user.email)
    assert_oauth_error(inactive, "invalid_grant")
    # It says no more than a wrong password does.
    wrong = await password_login(client, user.email, "not the right password")
    assert inactive.content == wrong.content


@pytest.mark.parametrize(
    "form",
    [
        {"grant_type": "password", "password": DEFAULT_PASSWORD},
        {"grant_type": "password", "username": "someone@example.com"},
        {"grant_type": "password", "username": "someone@example.com", "password": ""},
        {"grant_type": "password"},
        {},
        {"grant_type": "refresh_token"},
    ],
    ids=["no-username", "no-password", "empty-password", "neither", "empty", "no-refresh"],
)
async def test_missing_parameter_is_invalid_request(
    client: httpx.AsyncClient, form: dict[str, str]
) -> None:
    assert_oauth_error(await client.post(TOKEN_URL, data=form), "invalid_request")


@pytest.mark.parametrize("repeated", ["username", "password", "grant_type"])
async def test_repeated_parameter_is_invalid_request(
    app: FastAPI, client: httpx.AsyncClient, repeated: str
) -> None:
    user = await make_user(app)
    form = {"grant_type": "password", "username": user.email, "password": DEFAULT_PASSWORD}
    # The same parameter twice, even with the same value, is refused.
    pairs = [*form.items(), (repeated, form[repeated])]
    response = await client.post(
        TOKEN_URL,
        content=urlencode(pairs).encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_oauth_error(response, "invalid_request")


async def test_json_body_is_invalid_request_not_422(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    response = await client.post(
        TOKEN_URL,
        json={"grant_type": "password", "username": user.email, "password": DEFAULT_PASSWORD},
    )
    assert_oauth_error(response, "invalid_request")


async def test_multipart_body_is_invalid_request(app: FastAPI, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    response = await client.post(
        TOKEN_URL,
        data={"grant_type": "password", "username": user.email, "password": DEFAULT_PASSWORD},
        files={"unused": ("a.txt", b"x", "text/plain")},
    )
    assert_oauth_error(response, "invalid_request")


@pytest.mark.parametrize("grant", ["client_credentials", "authorization_code", "PASSWORD"])
async def test_unknown_grant_type_is_unsupported(
    app: FastAPI, client: httpx.AsyncClient, grant: str
) -> None:
    user = await make_user(app)
    response = await client.post(
        TOKEN_URL,
        data={"grant_type": grant, "username": user.email, "password": DEFAULT_PASSWORD},
    )
    assert_oauth_error(response, "unsupported_grant_type")


async def test_unknown_parameters_are_ignored(app: FastAPI, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    response = await client.post(
        TOKEN_URL,
        data={
            "grant_type": "password",
            "username": user.email,
            "password": DEFAULT_PASSWORD,
            "client_id": "swagger",
            "client_secret": "",
            "scope": "read write",
        },
    )
    assert response.status_code == 200, response.text
    refreshed = await client.post(
        TOKEN_URL,
        data={
            "grant_type": "refresh_token",
            "refresh_token": response.json()["refresh_token"],
            "scope": "anything",
        },
    )
    assert refreshed.status_code == 200, refreshed.text


async def test_get_token_is_405_in_the_error_shape(client: httpx.AsyncClient) -> None:
    response = await client.get(TOKEN_URL)
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert "POST" in response.headers["allow"]


async def test_jwks_lists_only_public_keys(client: httpx.AsyncClient) -> None:
    response = await client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    keys = response.json()["keys"]
    assert keys
    for key in keys:
        assert set(key) == {"kty", "crv", "x", "y", "kid", "use", "alg"}


# The refresh grant.


async def test_refresh_rotates_and_keeps_the_session(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    first = await tokens_for(client, user.email)
    response = await refresh(client, first["refresh_token"])
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    second = response.json()
    assert set(second) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert second["token_type"] == "bearer"
    assert second["expires_in"] == 900
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    claims = unverified_claims(second["access_token"])
    assert claims["sid"] == unverified_claims(first["access_token"])["sid"]
    assert claims["sub"] == str(user.id)
    assert (await me(client, second["access_token"])).status_code == 200
    # The new refresh token works in turn.
    third = await refresh(client, second["refresh_token"])
    assert third.status_code == 200, third.text


async def test_reused_refresh_token_ends_the_whole_family(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    first = await tokens_for(client, user.email)
    second = (await refresh(client, first["refresh_token"])).json()
    third = (await refresh(client, second["refresh_token"])).json()
    other_session = await tokens_for(client, user.email)

    # The first token, already spent, comes back (a thief, or a confused client).
    assert_oauth_error(await refresh(client, first["refresh_token"]), "invalid_grant")

    # The family is over: its newest refresh token too, and its access tokens, at once.
    assert_oauth_error(await refresh(client, third["refresh_token"]), "invalid_grant")
    for pair in (first, second, third):
        assert_invalid_token(await me(client, pair["access_token"]))
    # The user's other session is another family, untouched.
    assert (await me(client, other_session["access_token"])).status_code == 200
    assert (await refresh(client, other_session["refresh_token"])).status_code == 200


async def test_unknown_refresh_token_is_invalid_grant(client: httpx.AsyncClient) -> None:
    assert_oauth_error(await refresh(client, "no-such-token"), "invalid_grant")


async def test_refresh_race_has_exactly_one_winner(app: FastAPI, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    pair = await tokens_for(client, user.email)
    responses = await asyncio.gather(
        refresh(client, pair["refresh_token"]), refresh(client, pair["refresh_token"])
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 400], [response.text for response in responses]
    loser = next(response for response in responses if response.status_code == 400)
    assert_oauth_error(loser, "invalid_grant")


async def test_expired_refresh_token_is_invalid_grant(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    pair = await tokens_for(client, user.email)
    await expire_refresh_token(app, pair["refresh_token"])
    assert_oauth_error(await refresh(client, pair["refresh_token"]), "invalid_grant")


async def test_refresh_for_a_deactivated_user_is_invalid_grant(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    pair = await tokens_for(client, user.email)
    async with app.state.resources.sessionmaker() as session:
        await session.execute(update(User).where(User.id == user.id).values(is_active=False))
        await session.commit()
    assert_oauth_error(await refresh(client, pair["refresh_token"]), "invalid_grant")


# Rate limits.


async def test_account_limit_refuses_even_the_right_password(
    client: httpx.AsyncClient, make_settings: SettingsFactory
) -> None:
    async with serving(make_settings(limit={"token_account": "3/minute"})) as (app, limited):
        user = await make_user(app)
        other = await make_user(app)
        for remaining in (2, 1, 0):
            response = await password_login(limited, user.email, "wrong password here")
            assert_oauth_error(response, "invalid_grant")
            limit, left, reset = assert_rate_headers(response)
            assert (limit, left) == (3, remaining)
            assert 0 < reset <= 60
        assert_rate_limited(await password_login(limited, user.email))
        # The account is the e-mail, whatever its case.
        assert_rate_limited(await password_login(limited, user.email.upper()))
        # Another account from the same address is not held back.
        response = await password_login(limited, other.email)
        assert response.status_code == 200, response.text


async def test_ip_limit_refuses_every_account(
    client: httpx.AsyncClient, make_settings: SettingsFactory
) -> None:
    settings = make_settings(
        limit={"token_ip": "3/minute"},
        # The test client's peer is 127.0.0.1: trusted, so X-Forwarded-For names the client.
        server={"trusted_proxies": ["127.0.0.1"]},
    )
    async with serving(settings) as (app, limited):
        users = [await make_user(app) for _ in range(5)]
        first_ip = {"X-Forwarded-For": "203.0.113.7"}
        for user in users[:3]:
            response = await password_login(limited, user.email, headers=first_ip)
            assert response.status_code == 200, response.text
        assert_rate_limited(await password_login(limited, users[3].email, headers=first_ip))
        # The refresh grant counts against the address too.
        pair = await tokens_for(limited, users[4].email, headers={"X-Forwarded-For": "203.0.113.8"})
        refused = await limited.post(
            TOKEN_URL,
            data={"grant_type": "refresh_token", "refresh_token": pair["refresh_token"]},
            headers=first_ip,
        )
        assert_rate_limited(refused)
        other_ip = await password_login(
            limited, users[3].email, headers={"X-Forwarded-For": "203.0.113.9"}
        )
        assert other_ip.status_code == 200, other_ip.text


async def test_ipv6_clients_share_the_budget_of_their_64(
    client: httpx.AsyncClient, make_settings: SettingsFactory
) -> None:
    # One subscriber usually holds a whole /64: rotating through its addresses must not
    # buy fresh budgets (keel.core.ratelimit.ip_key).
    async with serving(make_settings(limit={"token_ip": "2/minute"})) as (app, _):
        user = await make_user(app)

        def from_address(address: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, client=(address, 40000))
            return httpx.AsyncClient(transport=transport, base_url="http://testserver")

        for address in ("2001:db8::1", "2001:db8::2"):
            async with from_address(address) as peer:
                assert (await password_login(peer, user.email)).status_code == 200
        async with from_address("2001:db8::ffff:3") as peer:
            assert_rate_limited(await password_login(peer, user.email))
        async with from_address("2001:db8:0:1::1") as peer:
            assert (await password_login(peer, user.email)).status_code == 200


# The hash upgrade.


async def test_old_hash_parameters_are_upgraded_at_login(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    user = await make_user(app)
    old_hasher = Argon2Hasher(time_cost=2, memory_cost=2048, parallelism=1)
    old_hash = old_hasher.hash(DEFAULT_PASSWORD)
    async with app.state.resources.sessionmaker() as session:
        await session.execute(
            update(User).where(User.id == user.id).values(hashed_password=old_hash)
        )
        await session.commit()

    response = await password_login(client, user.email)
    assert response.status_code == 200, response.text

    async with app.state.resources.sessionmaker() as session:
        stored = await session.scalar(select(User.hashed_password).where(User.id == user.id))
    assert stored is not None
    assert stored != old_hash
    auth = settings.auth
    assert stored.startswith("$argon2id$")
    assert (
        f"m={auth.argon2_memory_kib},t={auth.argon2_time_cost},p={auth.argon2_parallelism}"
        in stored
    )
    current = Argon2Hasher(
        time_cost=auth.argon2_time_cost,
        memory_cost=auth.argon2_memory_kib,
        parallelism=auth.argon2_parallelism,
    )
    assert PasswordHash((current,)).verify(DEFAULT_PASSWORD, stored)
    assert not current.check_needs_rehash(stored)
    # And the password still signs in.
    assert (await password_login(client, user.email)).status_code == 200


# Access tokens under attack, through GET /users/me.


async def test_no_credential_is_401_with_a_bare_challenge(client: httpx.AsyncClient) -> None:
    response = await client.get(ME_URL)
    assert_error(response, 401, "UNAUTHORIZED")
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_token_made_like_ours_is_accepted(app: FastAPI, client: httpx.AsyncClient) -> None:
    # The control for the attacks below: the same construction, with nothing wrong.
    user = await make_user(app)
    claims = unverified_claims((await tokens_for(client, user.email))["access_token"])
    claims["jti"] = "hand-made"
    response = await me(client, signed_by_the_app(app, claims))
    assert response.status_code == 200, response.text


async def _real_claims(app: FastAPI, client: httpx.AsyncClient) -> dict[str, Any]:
    user = await make_user(app)
    return unverified_claims((await tokens_for(client, user.email))["access_token"])


async def test_alg_none_is_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    claims = await _real_claims(app, client)
    kid = app.state.resources.keys.signing_key.kid
    for alg in ("none", "None", "NONE"):
        token = hand_made({"alg": alg, "typ": "at+jwt", "kid": kid}, claims, None)
        assert_invalid_token(await me(client, token))


async def test_hs256_signed_with_the_public_key_is_refused(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    claims = await _real_claims(app, client)
    key = app.state.resources.keys.signing_key
    pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk = next(
        k
        for k in (await client.get("/.well-known/jwks.json")).json()["keys"]
        if k["kid"] == key.kid
    )
    secrets = [
        pem,
        pem.strip(),
        json.dumps(jwk).encode(),
        json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode(),
    ]
    for secret in secrets:
        token = hand_made({"alg": "HS256", "typ": "at+jwt", "kid": key.kid}, claims, secret)
        assert_invalid_token(await me(client, token))


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("aud", "another-api"),
        ("aud", ["another-api"]),
        ("iss", "https://evil.example"),
        ("iss", "http://localhost:8000/"),
    ],
)
async def test_wrong_audience_or_issuer_is_refused(
    app: FastAPI, client: httpx.AsyncClient, claim: str, value: object
) -> None:
    claims = await _real_claims(app, client)
    claims[claim] = value
    assert_invalid_token(await me(client, signed_by_the_app(app, claims)))


async def test_expired_token_is_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    claims = await _real_claims(app, client)
    now = int(time.time())
    claims.update(iat=now - 960, exp=now - 60)
    assert_invalid_token(await me(client, signed_by_the_app(app, claims)))


async def test_another_typ_is_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    claims = await _real_claims(app, client)
    assert_invalid_token(await me(client, signed_by_the_app(app, claims, typ="JWT")))


async def test_tampered_payload_is_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    access = (await tokens_for(client, user.email))["access_token"]
    header, _, signature = access.split(".")
    claims = unverified_claims(access)
    claims["role"] = "admin"
    assert_invalid_token(await me(client, f"{header}.{_segment(claims)}.{signature}"))


async def test_refresh_token_is_not_an_access_token(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    pair = await tokens_for(client, user.email)
    assert_invalid_token(await me(client, pair["refresh_token"]))


@pytest.mark.parametrize(
    "token", ["garbage", "a.b.c", "eyJhbGciOiJFUzI1NiJ9..", "x" * 5000, "Bearer"]
)
async def test_garbage_is_refused(client: httpx.AsyncClient, token: str) -> None:
    assert_invalid_token(await me(client, token))


@pytest.mark.parametrize("authorization", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    "])
async def test_malformed_authorization_header_is_refused(
    client: httpx.AsyncClient, authorization: str
) -> None:
    assert_invalid_token(await client.get(ME_URL, headers={"Authorization": authorization}))


@pytest.mark.parametrize(
    ("claim", "value"),
    [("role", "superuser"), ("role", ""), ("exp", 10**20), ("iat", -(10**20))],
)
async def test_a_signed_token_with_an_impossible_claim_is_401_not_500(
    app: FastAPI, client: httpx.AsyncClient, claim: str, value: object
) -> None:
    """Issue 12, point 10: a correctly signed token whose claim no Keel token can have
    (a role that does not exist, a time no clock shows) is refused like any bad token."""
    claims = await _real_claims(app, client)
    claims[claim] = value
    assert_invalid_token(await me(client, signed_by_the_app(app, claims)))
