"""Sessions: one per sign-in, each a family of rotating refresh tokens.

Refresh tokens rotate on every use. The exchange is a single conditional UPDATE, so of
two requests racing with one token exactly one wins; a token presented after it was
spent (the loser of a race, or a thief replaying a stolen token) ends its whole family.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import ColumnElement

from keel.auth import repository
from keel.auth.repository import UserRow
from keel.auth.revocation import SessionRevocations
from keel.auth.schemas import TokenPair
from keel.core.db import Unit
from keel.core.pagination import CursorCodec, PageParams, Window, paginate
from keel.core.security.access_tokens import AccessTokens
from keel.core.security.opaque import new_token, token_hash
from keel.models import Role
from keel.models.base import utcnow

log = structlog.get_logger("keel.auth")


class InvalidGrant(Exception):
    """Any refusal of the token endpoint's grants: one answer, whatever the reason."""

    def __init__(self, reason: str) -> None:
        # The reason goes to the log, never to the client.
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class Client:
    ip: str | None
    user_agent: str | None


@dataclass(frozen=True, slots=True)
class Issuer:
    """What starting and renewing a session needs: the access-token signer, the
    refresh tokens' lifetime, and where ended sessions are recorded."""

    access_tokens: AccessTokens
    refresh_token_ttl: timedelta
    revocations: SessionRevocations


async def end_sessions(
    db: Unit, revocations: SessionRevocations, condition: ColumnElement[bool], reason: str
) -> list[uuid.UUID]:
    """End every live session matching `condition`; their access tokens stop at once."""
    ended = await repository.end_sessions(db, condition, utcnow(), reason)
    if ended:
        await revocations.revoke(ended)
        log.info("sessions_ended", count=len(ended), reason=reason)
    return ended


async def _pair(
    db: Unit,
    issuer: Issuer,
    user_id: uuid.UUID,
    role: Role,
    session_id: uuid.UUID,
    expires_at: datetime,
) -> TokenPair:
    """A new refresh token of the session, and an access token naming it."""
    refresh = new_token()
    await repository.add_refresh_token(db, session_id, token_hash(refresh), expires_at)
    access, expires_in = issuer.access_tokens.issue(user_id, session_id, str(role))
    return TokenPair(access_token=access, expires_in=expires_in, refresh_token=refresh)


async def start_session(db: Unit, issuer: Issuer, user: UserRow, client: Client) -> TokenPair:
    now = utcnow()
    session = await repository.add_session(
        db,
        {
            "user_id": user["id"],
            "created_at": now,
            "last_used_at": now,
            "expires_at": now + issuer.refresh_token_ttl,
            "user_agent": (client.user_agent or "")[:512] or None,
            "ip": client.ip,
        },
    )
    return await _pair(db, issuer, user["id"], user["role"], session["id"], session["expires_at"])


async def rotate(db: Unit, issuer: Issuer, refresh_token: str, client: Client) -> TokenPair:
    now = utcnow()
    hashed = token_hash(refresh_token)
    session_id = await repository.spend_refresh_token(db, hashed, now)
    if session_id is None:
        raise await _unusable(db, issuer, hashed)
    session = await repository.touch_live_session(db, session_id, now, client.ip)
    if session is None:
        raise InvalidGrant("session ended")
    user = await repository.find_user(db, session["user_id"])
    if user is None or not user["is_active"]:
        raise InvalidGrant("user inactive")
    return await _pair(db, issuer, user["id"], user["role"], session_id, session["expires_at"])


async def _unusable(db: Unit, issuer: Issuer, hashed: str) -> InvalidGrant:
    """Why a refresh token could not be spent; a spent one ends its whole family."""
    token = await repository.find_refresh_token(db, hashed)
    if token is not None and token["spent_at"] is not None:
        log.warning("refresh_token_reused", session_id=str(token["session_id"]))
        await end_sessions(
            db, issuer.revocations, repository.the_session(token["session_id"]), "reuse"
        )
        return InvalidGrant("refresh token reused")
    return InvalidGrant("refresh token unknown or expired")


async def end_by_refresh_token(
    db: Unit, revocations: SessionRevocations, refresh_token: str
) -> None:
    condition = repository.session_of_refresh_token(token_hash(refresh_token))
    await end_sessions(db, revocations, condition, "logout")


async def list_page(
    db: Unit,
    cursors: CursorCodec,
    user_id: uuid.UUID,
    current: uuid.UUID | None,
    params: PageParams,
) -> Window[Any]:
    """The user's live sessions, `current` marked."""
    query = repository.sessions_matching(repository.live_sessions_of(user_id, utcnow()))
    window = await paginate(
        db, query, params, id_column=repository.SESSION_COLUMNS.id, codec=cursors
    )
    for row in window.rows:
        row["current"] = row["id"] == current
    return window


async def end_own_session(
    db: Unit, revocations: SessionRevocations, user_id: uuid.UUID, session_id: uuid.UUID
) -> bool:
    """End one of the user's live sessions; False when there is none such."""
    condition = repository.live_sessions_of(user_id, utcnow()) & repository.the_session(session_id)
    return bool(await end_sessions(db, revocations, condition, "ended_by_user"))
