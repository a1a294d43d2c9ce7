"""Who is calling: the credential check every protected route depends on.

A bearer value that starts with the API-key prefix is an API key (looked up by its
hash); anything else must be an access token (verified by signature, then checked
against ended sessions without a database round trip).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from starlette.requests import HTTPConnection

from keel.auth import repository
from keel.auth.permissions import Permission, role_allows
from keel.auth.repository import UserRow
from keel.auth.revocation import SessionRevocations
from keel.auth.sessions import Issuer
from keel.core.db import DbSession, Unit
from keel.core.deps import app_state
from keel.core.errors import Forbidden, Unauthorized
from keel.core.openapi import API_KEY, BEARER, OAUTH2, answers, secured_by
from keel.core.security.access_tokens import AccessTokens, InvalidAccessToken
from keel.core.security.opaque import token_hash
from keel.models import Role
from keel.models.base import utcnow

# Declares the scheme in OpenAPI, so Swagger UI's Authorize button logs in through the
# token endpoint; the credential itself is read below (it may also be an API key).
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)

API_KEY_TOUCH_INTERVAL = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: uuid.UUID
    role: Role
    # Set for access tokens (the session they belong to), None for API keys.
    session_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    # When the credential stops being valid (access tokens; None for API keys).
    expires_at: datetime | None = None

    @property
    def via_api_key(self) -> bool:
        return self.api_key_id is not None

    def can(self, permission: Permission) -> bool:
        return role_allows(self.role, permission)


@dataclass(frozen=True, slots=True)
class Authenticator:
    """What checking a credential needs, opened once by the composition root."""

    access_tokens: AccessTokens
    revocations: SessionRevocations
    api_key_prefix: str

    async def principal(self, credential: str, db: Unit) -> Principal:
        if credential.startswith(self.api_key_prefix):
            return await _from_api_key(credential, db)
        try:
            claims = self.access_tokens.verify(credential)
        except InvalidAccessToken as exc:
            raise _unauthorized("Invalid or expired token", credential_sent=True) from exc
        try:
            role = Role(claims.role)
        except ValueError:  # signed by us, yet no role we have: refused, not a 500
            raise _unauthorized("Invalid or expired token", credential_sent=True) from None
        if await self.revocations.is_revoked(claims.session_id):
            raise _unauthorized("Session has ended", credential_sent=True)
        return Principal(
            user_id=claims.user_id,
            role=role,
            session_id=claims.session_id,
            expires_at=claims.expires_at,
        )


def _unauthorized(message: str, *, credential_sent: bool) -> Unauthorized:
    challenge = 'Bearer error="invalid_token"' if credential_sent else "Bearer"
    return Unauthorized(message, headers={"WWW-Authenticate": challenge})


def credential_of(request: HTTPConnection) -> str | None:
    """The credential a request (or WebSocket handshake) carries, if any; a malformed
    `Authorization` header is 401."""
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _unauthorized("Malformed Authorization header", credential_sent=True)
        return value.strip()
    return request.headers.get("x-api-key")


async def _from_api_key(key: str, db: Unit) -> Principal:
    owner = await repository.find_api_key_owner(db, token_hash(key))
    now = utcnow()
    if owner is None or (owner["expires_at"] is not None and owner["expires_at"] <= now):
        raise _unauthorized("Invalid or expired API key", credential_sent=True)
    last_used_at = owner["last_used_at"]
    if last_used_at is None or now - last_used_at >= API_KEY_TOUCH_INTERVAL:
        await repository.touch_api_key(db, owner["key_id"], now)
    return Principal(user_id=owner["user_id"], role=Role(owner["role"]), api_key_id=owner["key_id"])


Revocations = Annotated[SessionRevocations, Depends(app_state("revocations"))]
IssuerDep = Annotated[Issuer, Depends(app_state("issuer"))]


@answers(401)
@secured_by(OAUTH2, BEARER, API_KEY)
async def authenticate(
    request: Request,
    db: DbSession,
    _scheme: Annotated[str | None, Depends(oauth2_scheme)] = None,
) -> Principal:
    credential = credential_of(request)
    if credential is None:
        raise _unauthorized("Not authenticated", credential_sent=False)
    # Read here rather than as a dependency of its own: every protected request runs
    # this, and each dependency costs FastAPI a resolution step.
    authenticator: Authenticator = request.app.state.authenticator
    return await authenticator.principal(credential, db)


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]


# An API key sent as a bearer token is refused here too (403), not only X-API-Key.
@answers(403)
@secured_by(OAUTH2, BEARER)
async def _password_login(principal: CurrentPrincipal) -> Principal:
    if principal.via_api_key:
        raise Forbidden("This action needs a sign-in with a password, not an API key")
    return principal


# For the actions API.md keeps from API keys (key management, sessions, password...).
PasswordLogin = Annotated[Principal, Depends(_password_login)]


def require(permission: Permission) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets through only callers whose role has `permission`."""

    @answers(403)
    async def check(principal: CurrentPrincipal) -> Principal:
        if not principal.can(permission):
            raise Forbidden("Your role does not allow this")
        return principal

    return check


async def _current_user(principal: CurrentPrincipal, db: DbSession) -> UserRow:
    user = await repository.find_user(db, principal.user_id)
    if user is None or not user["is_active"]:
        raise _unauthorized("Account is not active", credential_sent=True)
    return user


CurrentUser = Annotated[UserRow, Depends(_current_user)]
