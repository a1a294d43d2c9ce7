"""Access tokens: what is issued, and every kind of token that must be refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keel.config import Settings
from keel.core.security import access_tokens, keys
from keel.core.security.access_tokens import AccessTokens, InvalidAccessToken
from keel.core.security.keys import KeyRing, thumbprint
from tests.conftest import SettingsFactory

# Tests are async only because make_settings rests on the suite's async fixtures.
pytestmark = pytest.mark.anyio

TTL = 30
USER, SESSION = uuid.uuid4(), uuid.uuid4()


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def dev_settings(make_settings: SettingsFactory, tmp_path: Path) -> Settings:
    return make_settings(data_dir=tmp_path, auth={"access_token_ttl_seconds": TTL})


@pytest.fixture
def ring(dev_settings: Settings, clock: FakeClock) -> KeyRing:
    return KeyRing.load(dev_settings, now=clock)


@pytest.fixture
def good(dev_settings: Settings, clock: FakeClock) -> dict[str, Any]:
    """Claims as we issue them, for tests to spoil."""
    return good_claims(dev_settings, clock)


@pytest.fixture
def tokens(ring: KeyRing, dev_settings: Settings, clock: FakeClock) -> AccessTokens:
    return AccessTokens(ring, dev_settings, now=clock)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def good_claims(settings: Settings, clock: FakeClock) -> dict[str, Any]:
    now = int(clock.now.timestamp())
    return {
        "iss": settings.token_issuer,
        "aud": settings.auth.audience,
        "sub": str(USER),
        "sid": str(SESSION),
        "iat": now,
        "exp": now + TTL,
        "jti": secrets.token_urlsafe(16),
        "role": "user",
    }


def es256(
    ring: KeyRing,
    claims: dict[str, Any],
    key: ec.EllipticCurvePrivateKey | None = None,
    **header: Any,
) -> str:
    """Signed like ours (our key and kid unless told), header fields overridable.

    kid=None leaves kid out; typ=None too (PyJWT would otherwise put "JWT").
    """
    headers = {"kid": ring.signing_key.kid, "typ": "at+jwt", **header}
    if headers["kid"] is None:
        del headers["kid"]
    return jwt.encode(claims, key or ring.signing_key.private_key, "ES256", headers=headers)


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    # By hand: PyJWT itself refuses to use a PEM key as an HMAC secret.
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def refused(tokens: AccessTokens, token: str) -> str:
    with pytest.raises(InvalidAccessToken) as caught:
        tokens.verify(token)
    return caught.value.reason


async def test_round_trip(tokens: AccessTokens, ring: KeyRing, clock: FakeClock) -> None:
    token, expires_in = tokens.issue(USER, SESSION, "admin")
    assert expires_in == TTL
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "kid": ring.signing_key.kid, "typ": "at+jwt"}

    claims = tokens.verify(token)
    assert (claims.user_id, claims.session_id, claims.role) == (USER, SESSION, "admin")
    assert claims.issued_at == clock.now
    assert claims.expires_at == clock.now + timedelta(seconds=TTL)

    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(payload) == {"iss", "aud", "sub", "sid", "exp", "iat", "jti", "role"}
    assert payload["iss"] == "http://localhost:8000"
    assert payload["aud"] == "keel-api"
    assert tokens.verify(tokens.issue(USER, SESSION, "admin")[0]).jti != claims.jti


async def test_public_jwks_verifies_our_tokens(tokens: AccessTokens, ring: KeyRing) -> None:
    # What another service holding only our JWKS would do.
    token, _ = tokens.issue(USER, SESSION, "user")
    (published,) = ring.jwks()["keys"]
    claims = jwt.decode(
        token,
        jwt.PyJWK(published),
        algorithms=["ES256"],
        audience="keel-api",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["sub"] == str(USER)


async def test_alg_none_is_refused(
    tokens: AccessTokens, ring: KeyRing, good: dict[str, Any]
) -> None:
    header = {"alg": "none", "typ": "at+jwt", "kid": ring.signing_key.kid}
    token = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(good).encode())}."
    assert refused(tokens, token) == "algorithm not allowed"


@pytest.mark.parametrize("secret_form", ["pem", "jwk"])
async def test_hs256_signed_with_the_public_key_is_refused(
    tokens: AccessTokens,
    ring: KeyRing,
    good: dict[str, Any],
    secret_form: str,
) -> None:
    # The algorithm-confusion attack: the "secret" is our published public key.
    public = ring.signing_key.private_key.public_key()
    if secret_form == "pem":
        secret = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        secret = json.dumps(ring.jwks()["keys"][0]).encode()
    header = {"alg": "HS256", "typ": "at+jwt", "kid": ring.signing_key.kid}
    token = hs256(header, good, secret)
    assert refused(tokens, token) == "algorithm not allowed"


async def test_another_key_under_our_kid_is_refused(
    tokens: AccessTokens, ring: KeyRing, good: dict[str, Any]
) -> None:
    impostor = ec.generate_private_key(ec.SECP256R1())
    token = es256(ring, good, key=impostor)
    assert refused(tokens, token) == "bad signature"


async def test_a_signed_payload_that_is_not_json_is_refused(
    tokens: AccessTokens, ring: KeyRing
) -> None:
    headers = {"kid": ring.signing_key.kid, "typ": "at+jwt"}
    token = jwt.api_jws.PyJWS().encode(
        b"not json", ring.signing_key.private_key, "ES256", headers=headers
    )
    assert refused(tokens, token) == "malformed"


async def test_a_tampered_payload_is_refused(tokens: AccessTokens) -> None:
    header, payload, signature = tokens.issue(USER, SESSION, "user")[0].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["role"] = "admin"
    forged = f"{header}.{b64(json.dumps(claims).encode())}.{signature}"
    assert refused(tokens, forged) == "bad signature"


async def test_an_unknown_kid_is_refused(
    tokens: AccessTokens, ring: KeyRing, good: dict[str, Any]
) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    kid = thumbprint(stranger.public_key())
    token = es256(ring, good, key=stranger, kid=kid)
    assert refused(tokens, token) == "unknown key"
    no_kid = es256(ring, good, kid=None)
    assert refused(tokens, no_kid) == "unknown key"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"aud": "another-api"}, "wrong audience"),
        ({"aud": ["keel-api", "another-api"]}, "wrong audience"),
        ({"iss": "https://evil.example"}, "wrong issuer"),
        ({"sub": "42"}, "sub or sid not a UUID"),
        ({"sid": "not-a-session"}, "sub or sid not a UUID"),
        ({"exp": "never"}, "bad time claim"),
        ({"iat": True}, "bad time claim"),
        ({"role": 7}, "bad claim"),
        # Times past what a clock can show (datetime overflows): refused, not a 500.
        ({"exp": 10**20}, "bad time claim"),
        ({"iat": -(10**20)}, "bad time claim"),
    ],
)
async def test_wrong_claims_are_refused(
    tokens: AccessTokens, ring: KeyRing, good: dict[str, Any], change: dict[str, Any], reason: str
) -> None:
    assert refused(tokens, es256(ring, {**good, **change})) == reason


@pytest.mark.parametrize("claim", ["sid", "sub", "exp", "iat", "jti", "role", "iss", "aud"])
async def test_a_missing_claim_is_refused(
    tokens: AccessTokens, ring: KeyRing, good: dict[str, Any], claim: str
) -> None:
    del good[claim]
    assert refused(tokens, es256(ring, good)) == f"missing claim {claim}"


async def test_expiry_allows_ten_seconds_of_clock_skew(
    tokens: AccessTokens, clock: FakeClock
) -> None:
    token, _ = tokens.issue(USER, SESSION, "user")
    clock.advance(TTL + 9)
    assert tokens.verify(token).user_id == USER
    clock.advance(1)
    assert refused(tokens, token) == "expired"


async def test_a_token_from_the_future_is_refused(
    tokens: AccessTokens, ring: KeyRing, good: dict[str, Any]
) -> None:
    good["iat"] += 60
    assert refused(tokens, es256(ring, good)) == "not yet valid"


@pytest.mark.parametrize("typ", ["JWT", "refresh+jwt", None])
async def test_another_kind_of_jwt_is_refused(
    tokens: AccessTokens,
    ring: KeyRing,
    good: dict[str, Any],
    typ: str | None,
) -> None:
    token = es256(ring, good, typ=typ)
    assert refused(tokens, token) == "not an access token"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (secrets.token_urlsafe(32), "malformed"),  # what a refresh token or API key looks like
        ("", "malformed"),
        ("a.b.c", "malformed"),
        ("ä.ö.ü", "malformed"),
        ("e30.e30.", "algorithm not allowed"),  # {}.{} with no signature
        ("x" * 5000, "too long"),
    ],
)
async def test_garbage_is_refused(tokens: AccessTokens, token: str, reason: str) -> None:
    assert refused(tokens, token) == reason


async def test_tokens_of_a_retired_key_live_out_their_lifetime(
    dev_settings: Settings, clock: FakeClock
) -> None:
    before = AccessTokens(KeyRing.load(dev_settings, now=clock), dev_settings, now=clock)
    old_token, _ = before.issue(USER, SESSION, "user")
    clock.advance(5)
    retired_at = clock.now
    ring = keys.rotate(dev_settings, now=clock)
    after = AccessTokens(ring, dev_settings, now=clock)
    new_token, _ = after.issue(USER, SESSION, "user")
    assert jwt.get_unverified_header(new_token)["kid"] == ring.signing_key.kid

    assert after.verify(old_token).user_id == USER
    clock.now = retired_at + timedelta(seconds=TTL - 1)
    assert after.verify(old_token).user_id == USER  # 26 s past exp: inside the leeway

    # From retired_at + ttl no token of the old key can be alive: even one with a fresh
    # exp (a worker still on the old key after the rotation) is refused.
    clock.now = retired_at + timedelta(seconds=TTL)
    late_token, _ = before.issue(USER, SESSION, "user")
    assert refused(after, late_token) == "unknown key"
    assert after.verify(new_token).user_id == USER


async def test_configured_keys_sign_with_the_first_and_verify_with_all(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    newest, older = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    files = []
    for name, key in (("new.pem", newest), ("old.pem", older)):
        path = tmp_path / name
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        files.append(path)
    before = make_settings(data_dir=tmp_path, auth={"signing_key_files": files[1:]})
    now = make_settings(data_dir=tmp_path, auth={"signing_key_files": files})
    old_token, _ = AccessTokens(KeyRing.load(before), before).issue(USER, SESSION, "user")
    current = AccessTokens(KeyRing.load(now), now)
    new_token, _ = current.issue(USER, SESSION, "user")

    assert jwt.get_unverified_header(new_token)["kid"] == thumbprint(newest.public_key())
    assert current.verify(new_token).session_id == SESSION
    assert current.verify(old_token).session_id == SESSION
    dropped = make_settings(data_dir=tmp_path, auth={"signing_key_files": files[:1]})
    assert refused(AccessTokens(KeyRing.load(dropped), dropped), old_token) == "unknown key"


async def test_signatures_are_checked_once_per_token_and_the_cache_is_bounded(
    tokens: AccessTokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(access_tokens, "VERIFIED_CACHE_SIZE", 3)
    decoded: list[str] = []
    real_decode = jwt.decode

    def counting_decode(token: str, *args: Any, **kwargs: Any) -> Any:
        decoded.append(token)
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    issued = [tokens.issue(USER, SESSION, "user")[0] for _ in range(4)]
    for _ in range(3):
        assert tokens.verify(issued[0]).user_id == USER
    assert decoded == [issued[0]]
    # A token differing by one character is another token: its signature is checked.
    spoiled = issued[0][:-2] + ("A" if issued[0][-2] != "A" else "B") + issued[0][-1]
    assert refused(tokens, spoiled) == "bad signature"
    for token in issued[1:]:
        tokens.verify(token)
    assert len(tokens._verified) == 3  # the oldest was let go
    tokens.verify(issued[0])
    assert decoded.count(issued[0]) == 2
