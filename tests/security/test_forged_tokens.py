"""Forged and confused credentials are 401 (or the grant's own refusal), never accepted.

What tests/auth/test_token.py (HTTP) and tests/core/test_access_tokens.py (the verifier)
already cover is not repeated here: `alg: none`, HS256 signed with the public key, an
edited payload, wrong `iss`/`aud`, a missing claim, an expired or early `iat`, another
`typ`, garbage, a refresh token used as an access token, and a correctly signed token
with an impossible claim. This module adds the rest of the attacks of the brief:

- RFC 8725 §2.9 and §3.10 (indirect attacks, do not trust received claims) and
  ASVS 5.0 V9.1.3: key material only from our own configuration: `jku`, `x5u`, `jwk`
  and `x5c` headers are never followed or used, and `kid` is only ever a lookup key
  (no path, no SQL); OWASP API Security Top 10 2023 API7 (SSRF) for `jku`/`x5u`.
- RFC 8725 §3.1 and ASVS 5.0 V9.1.1/V9.1.2: the algorithm is pinned, whatever the key.
- ASVS 5.0 V9.2.1: `exp` and `nbf` are enforced.
- RFC 8725 §2.8, §3.11, §3.12 and ASVS 5.0 V9.2.2: no token serves another purpose
  (access, refresh, e-mail verification, password reset, API key), in any direction.
- RFC 7515 §4.1.11: a `crit` header naming an extension we do not know is refused.
- OWASP API Security Top 10 2023 API2 (Broken Authentication) for all of the above.
"""

from __future__ import annotations

import base64
import json
import select
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from fastapi import FastAPI

from keel.core.security.keys import public_jwk, thumbprint
from keel.models import OneTimePurpose
from tests.auth.test_token import (
    assert_invalid_token,
    assert_oauth_error,
    hand_made,
    me,
    refresh,
    signed_by_the_app,
    tokens_for,
    unverified_claims,
)
from tests.factories.users import make_user
from tests.security.support import one_time_token
from tests.support.assertions import assert_error
from tests.support.servers import HOST

pytestmark = pytest.mark.anyio

ATTACKER = ec.generate_private_key(ec.SECP256R1())
ATTACKER_KID = thumbprint(ATTACKER.public_key())


async def _claims(app: FastAPI, client: httpx.AsyncClient) -> dict[str, Any]:
    """The claims of a real, live token: only the signature will be wrong."""
    user = await make_user(app)
    return unverified_claims((await tokens_for(client, user.email))["access_token"])


def _segment(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def _by_attacker(claims: dict[str, Any], **header: Any) -> str:
    """ES256-signed by the attacker's key, the header exactly as given (by hand: PyJWT
    will not write some of the headers these attacks need, a non-string kid say)."""
    signing_input = f"{_segment({'alg': 'ES256', 'typ': 'at+jwt', **header})}.{_segment(claims)}"
    signature = jwt.get_algorithm_by_name("ES256").sign(signing_input.encode(), ATTACKER)
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


@pytest.fixture
def listener() -> Iterator[tuple[str, socket.socket]]:
    """A local port that records connections: where a `jku`/`x5u` URL points."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind((HOST, 0))
    server.listen(16)
    server.setblocking(False)  # noqa: FBT003 - the socket API's own flag
    try:
        yield f"http://{HOST}:{server.getsockname()[1]}", server
    finally:
        server.close()


def _connections_attempted(server: socket.socket) -> bool:
    # A connection the kernel completed waits in the backlog and makes the socket
    # readable; half a second covers a fetch started in the background.
    readable, _, _ = select.select([server], [], [], 0.5)
    return bool(readable)


def _self_signed_certificate(key: ec.EllipticCurvePrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keel.example")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return base64.b64encode(certificate.public_bytes(Encoding.DER)).decode()


@pytest.mark.parametrize("kid", ["attacker", "ours"])
async def test_key_urls_in_the_header_are_never_fetched(
    app: FastAPI,
    client: httpx.AsyncClient,
    listener: tuple[str, socket.socket],
    kid: str,
) -> None:
    url, server = listener
    claims = await _claims(app, client)
    key_id = ATTACKER_KID if kid == "attacker" else app.state.resources.keys.signing_key.kid
    for header in (
        {"jku": f"{url}/jwks.json"},
        {"x5u": f"{url}/cert.pem"},
        {"jku": f"{url}/jwks.json", "x5u": f"{url}/cert.pem"},
    ):
        assert_invalid_token(await me(client, _by_attacker(claims, kid=key_id, **header)))
    assert not _connections_attempted(server), "the server fetched a key from a token's URL"


@pytest.mark.parametrize("kid", ["attacker", "ours", "none"])
async def test_keys_embedded_in_the_header_are_never_used(
    app: FastAPI, client: httpx.AsyncClient, kid: str
) -> None:
    claims = await _claims(app, client)
    jwk = {**public_jwk(ATTACKER.public_key()), "alg": "ES256", "use": "sig"}
    certificate = _self_signed_certificate(ATTACKER)
    named: dict[str, Any] = {}
    if kid != "none":
        ours = app.state.resources.keys.signing_key.kid
        named["kid"] = ATTACKER_KID if kid == "attacker" else ours
    for embedded in ({"jwk": jwk}, {"x5c": [certificate]}, {"jwk": jwk, "x5c": [certificate]}):
        assert_invalid_token(await me(client, _by_attacker(claims, **embedded, **named)))


@pytest.mark.parametrize(
    "kid",
    [
        "../../../../../../../../dev/null",
        "/dev/null",
        "keys/../../../../etc/passwd",
        "x' UNION SELECT 'attacker' --",
        "' OR '1'='1",
        "%00",
        "ours\x00",
        "ours/../ours",
        "",
        123,
        None,
        ["ours"],
        {"$ne": None},
    ],
    ids=lambda kid: repr(kid)[:30],
)
async def test_kid_is_only_a_lookup_among_our_keys(
    app: FastAPI, client: httpx.AsyncClient, kid: object
) -> None:
    ours = app.state.resources.keys.signing_key.kid
    if isinstance(kid, str):
        kid = kid.replace("ours", ours)
    elif isinstance(kid, list):
        kid = [ours]
    claims = await _claims(app, client)
    header = {"alg": "HS256", "typ": "at+jwt", "kid": kid}
    # The classic: a path to an empty file, and the token MACed with an empty key.
    assert_invalid_token(await me(client, hand_made(header, claims, b"")))
    assert_invalid_token(await me(client, _by_attacker(claims, kid=kid)))
    # The service still works: no lookup above broke anything.
    assert (await me(client, signed_by_the_app(app, claims))).status_code == 200


async def test_an_unknown_kid_is_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    claims = await _claims(app, client)
    assert_invalid_token(await me(client, _by_attacker(claims, kid=ATTACKER_KID)))
    assert_invalid_token(await me(client, _by_attacker(claims, kid=str(uuid.uuid4()))))


@pytest.mark.parametrize("alg", ["ES384", "ES512", "RS256", "PS256", "EdDSA", "HS512", "es256"])
async def test_only_es256_is_accepted(app: FastAPI, client: httpx.AsyncClient, alg: str) -> None:
    claims = await _claims(app, client)
    kid = app.state.resources.keys.signing_key.kid
    # Whatever the signature, a header naming another algorithm never reaches a key.
    token = signed_by_the_app(app, claims)
    header, payload, signature = token.split(".")
    forged_header = hand_made({"alg": alg, "typ": "at+jwt", "kid": kid}, {}, None).split(".")[0]
    assert_invalid_token(await me(client, f"{forged_header}.{payload}.{signature}"))
    assert header != forged_header


async def test_a_token_without_exp_is_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    claims = await _claims(app, client)
    del claims["exp"]
    assert_invalid_token(await me(client, signed_by_the_app(app, claims)))


@pytest.mark.parametrize("nbf", [3600, 24 * 3600, "soon", 1.5, True])
async def test_nbf_in_the_future_or_malformed_is_refused(
    app: FastAPI, client: httpx.AsyncClient, nbf: object
) -> None:
    claims = await _claims(app, client)
    is_offset = isinstance(nbf, int) and not isinstance(nbf, bool)
    claims["nbf"] = int(time.time()) + nbf if is_offset else nbf  # type: ignore[operator]
    assert_invalid_token(await me(client, signed_by_the_app(app, claims)))
    # The control: an nbf already passed is fine.
    claims["nbf"] = int(time.time()) - 60
    assert (await me(client, signed_by_the_app(app, claims))).status_code == 200


async def test_an_unknown_critical_header_is_refused(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    claims = await _claims(app, client)
    token = signed_by_the_app(app, claims, crit=["urn:example:must-understand"])
    token_with_value = signed_by_the_app(
        app, claims, crit=["urn:example:must-understand"], **{"urn:example:must-understand": 1}
    )
    assert_invalid_token(await me(client, token))
    assert_invalid_token(await me(client, token_with_value))


@pytest.mark.parametrize(
    "claim_change",
    [
        {"sub": "00000000-0000-0000-0000-000000000000"},
        {"sub": str(uuid.uuid4())},
        {"role": ["admin"]},
        {"role": "ADMIN"},
        {"jti": 5},
        {"aud": ["keel-api"]},
    ],
    ids=["nil-sub", "unknown-sub", "role-list", "role-upper", "jti-number", "aud-list"],
)
async def test_a_signed_token_naming_nobody_or_nothing_is_401(
    app: FastAPI, client: httpx.AsyncClient, claim_change: dict[str, object]
) -> None:
    # Signed by the app itself (the worst case: a bug in issuing, or a stolen key
    # used carelessly): still 401, never someone's account, never a 500.
    claims = await _claims(app, client)
    assert_invalid_token(await me(client, signed_by_the_app(app, {**claims, **claim_change})))


# Token-type confusion: each credential only where it belongs.


async def _one_of_each(app: FastAPI, client: httpx.AsyncClient) -> dict[str, str]:
    """A live access token, refresh token, API key, verification and reset token, all
    of one unverified user."""
    user = await make_user(app, is_verified=False)
    pair = await tokens_for(client, user.email)
    key = await client.post(
        "/api/v1/api-keys",
        json={"name": "confusion"},
        headers={"Authorization": f"Bearer {pair['access_token']}"},
    )
    assert key.status_code == 201, key.text
    return {
        "access": pair["access_token"],
        "refresh": pair["refresh_token"],
        "api_key": key.json()["key"],
        "verify": await one_time_token(app, user, OneTimePurpose.VERIFY_EMAIL),
        "reset": await one_time_token(app, user, OneTimePurpose.RESET_PASSWORD),
    }


async def _as_access(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await me(client, token)


async def _as_api_key_header(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/api/v1/users/me", headers={"X-API-Key": token})


async def _as_refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await refresh(client, token)


async def _as_verify(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/api/v1/auth/verify-email", json={"token": token})


async def _as_reset(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(
        "/api/v1/auth/reset-password",
        json={"token": token, "new_password": "an entirely new passphrase"},
    )


USES = {
    "access": _as_access,
    "refresh": _as_refresh,
    "verify": _as_verify,
    "reset": _as_reset,
}


def _assert_refused(use: str, response: httpx.Response) -> None:
    if use == "access":
        assert_invalid_token(response)
    elif use == "refresh":
        assert_oauth_error(response, "invalid_grant")
    else:
        assert_error(response, 400, "BAD_REQUEST")


# Every credential at every use but its own (whose success is the control below).
MISUSES = [
    (kind, use)
    for kind in ("access", "refresh", "api_key", "verify", "reset")
    for use in USES
    if kind != use and (kind, use) != ("api_key", "access")
]


@pytest.mark.parametrize(("kind", "use"), MISUSES, ids=[f"{k}-as-{u}" for k, u in MISUSES])
async def test_no_credential_serves_another_purpose(
    app: FastAPI, client: httpx.AsyncClient, kind: str, use: str
) -> None:
    tokens = await _one_of_each(app, client)
    _assert_refused(use, await USES[use](client, tokens[kind]))
    # The wrong use spent nothing: every credential still serves its own purpose.
    assert (await _as_access(client, tokens["access"])).status_code == 200
    assert (await _as_access(client, tokens["api_key"])).status_code == 200
    assert (await _as_verify(client, tokens["verify"])).status_code == 204
    assert (await _as_refresh(client, tokens["refresh"])).status_code == 200
    assert (await _as_reset(client, tokens["reset"])).status_code == 204


@pytest.mark.parametrize("kind", ["refresh", "verify", "reset"])
async def test_opaque_tokens_are_not_api_keys(
    app: FastAPI, client: httpx.AsyncClient, kind: str
) -> None:
    tokens = await _one_of_each(app, client)
    prefix = app.state.settings.auth.api_key_prefix
    for credential in (tokens[kind], f"{prefix}{tokens[kind]}"):
        assert_invalid_token(await _as_api_key_header(client, credential))
        assert_invalid_token(await _as_access(client, credential))


# Controls: the forgeries above are what they claim to be, and the listener hears.


async def test_the_forgeries_are_well_formed(app: FastAPI, client: httpx.AsyncClient) -> None:
    claims = await _claims(app, client)
    token = _by_attacker(claims, kid=ATTACKER_KID, jwk=public_jwk(ATTACKER.public_key()))
    # A verifier that trusted the attacker's key would accept it: only trust is missing.
    decoded = jwt.decode(
        token,
        ATTACKER.public_key(),
        algorithms=["ES256"],
        audience=claims["aud"],
        issuer=claims["iss"],
    )
    assert decoded == claims


def test_the_listener_notices_a_connection(listener: tuple[str, socket.socket]) -> None:
    _, server = listener
    with socket.create_connection(server.getsockname(), timeout=2):
        assert _connections_attempted(server)
