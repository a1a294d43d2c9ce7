"""Access tokens: short-lived JWTs (RFC 9068 profile) signed with the key ring's ES256 key.

Verification trusts nothing in the token before its signature is checked: the algorithm
is pinned to ES256 (so `none`, and HS256 "signed" with our public key, never get
through), the key is looked up only among our own by `kid`, and `typ` must be `at+jwt`
so that no other JWT (an ID token, a future refresh JWT) passes as an access token.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import jwt

from keel.config import Settings
from keel.core.security.keys import Clock, KeyRing, utc_now

ALGORITHM = "ES256"
TOKEN_TYPES = {"at+jwt", "application/at+jwt"}  # RFC 9068 §2.1; media types ignore case
# Clocks of the machines involved may differ a little: exp and iat get this much slack.
LEEWAY_SECONDS = 10
# Ours are about 500 characters; anything far larger is not worth parsing.
MAX_TOKEN_CHARS = 4096
# Tokens whose signature was checked, kept per process (a few MB at most).
VERIFIED_CACHE_SIZE = 4096
# Time claims must lie between 1970 and 2100 (seconds since the epoch).
MAX_TIME_CLAIM = 4_102_444_800
REQUIRED_CLAIMS = ["iss", "aud", "sub", "sid", "exp", "iat", "jti", "role"]


class InvalidAccessToken(Exception):
    """Any reason a token is refused. `reason` is for logs, never for the client."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: UUID
    session_id: UUID
    role: str
    jti: str
    issued_at: datetime
    expires_at: datetime


class AccessTokens:
    def __init__(self, keys: KeyRing, settings: Settings, *, now: Clock = utc_now) -> None:
        self._keys = keys
        self._issuer = settings.token_issuer
        self._audience = settings.auth.audience
        self.ttl_seconds = settings.auth.access_token_ttl_seconds
        self._now = now
        # Signature-checked claims by token (insertion order: the first is the oldest).
        self._verified: dict[str, dict[str, Any]] = {}

    def issue(self, user_id: UUID, session_id: UUID, role: str) -> tuple[str, int]:
        """A signed token and its lifetime in seconds (the token endpoint's `expires_in`)."""
        issued_at = int(self._now().timestamp())
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": str(user_id),
            "sid": str(session_id),
            "iat": issued_at,
            "exp": issued_at + self.ttl_seconds,
            "jti": secrets.token_urlsafe(16),
            "role": role,
        }
        key = self._keys.signing_key
        headers = {"kid": key.kid, "typ": "at+jwt"}
        token = jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers=headers)
        return token, self.ttl_seconds

    def verify(self, token: str) -> AccessClaims:
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidAccessToken("too long")
        # A token's signature is checked once (an ES256 verification is ~150 us); its
        # times are checked on every use, and revocation is the caller's, every time.
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify_signed(token)
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.pop(next(iter(self._verified)))  # the oldest entry
            self._verified[token] = claims
        return self._claims(claims)

    def _verify_signed(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidAccessToken("malformed") from None
        # Header checks come first, so that a token of another kind or algorithm never
        # reaches a key, whatever PyJWT would make of it.
        if header.get("alg") != ALGORITHM:
            raise InvalidAccessToken("algorithm not allowed")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in TOKEN_TYPES:
            raise InvalidAccessToken("not an access token")
        kid = header.get("kid")
        public_key = self._keys.public_key(kid) if isinstance(kid, str) else None
        if public_key is None:
            raise InvalidAccessToken("unknown key")
        try:
            claims = jwt.decode(
                token,
                public_key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                # Times are checked below against our own clock, which tests can set.
                options={
                    "require": REQUIRED_CLAIMS,
                    "strict_aud": True,
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise InvalidAccessToken("bad signature") from None
        except jwt.InvalidAudienceError:
            raise InvalidAccessToken("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidAccessToken("wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidAccessToken(f"missing claim {exc.claim}") from None
        except jwt.PyJWTError:
            raise InvalidAccessToken("malformed") from None
        return claims

    def _claims(self, claims: dict[str, Any]) -> AccessClaims:
        now = self._now().timestamp()
        exp, iat, nbf = claims["exp"], claims["iat"], claims.get("nbf")
        for value in (exp, iat) if nbf is None else (exp, iat, nbf):
            # We issue whole seconds; bool is an int in Python, and no kind of time. A
            # time no clock can show (datetime overflows) is refused here, not a 500.
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidAccessToken("bad time claim")
            if not 0 <= value < MAX_TIME_CLAIM:
                raise InvalidAccessToken("bad time claim")
        if now >= exp + LEEWAY_SECONDS:
            raise InvalidAccessToken("expired")
        if iat > now + LEEWAY_SECONDS or (nbf is not None and nbf > now + LEEWAY_SECONDS):
            raise InvalidAccessToken("not yet valid")
        role, jti = claims["role"], claims["jti"]
        if not isinstance(role, str) or not isinstance(jti, str):
            raise InvalidAccessToken("bad claim")
        try:
            user_id, session_id = UUID(claims["sub"]), UUID(claims["sid"])
        except (TypeError, ValueError, AttributeError):
            raise InvalidAccessToken("sub or sid not a UUID") from None
        return AccessClaims(
            user_id=user_id,
            session_id=session_id,
            role=role,
            jti=jti,
            issued_at=datetime.fromtimestamp(iat, UTC),
            expires_at=datetime.fromtimestamp(exp, UTC),
        )
