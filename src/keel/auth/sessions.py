"""Sessions: one per sign-in, each a family of rotating refresh tokens.

Refresh tokens rotate on every use. The exchange is a single conditional UPDATE, so of
two requests racing with one token exactly one wins; a token presented after it was
spent (the loser of a race, or a thief replaying a stolen token) ends its whole family.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy import ColumnElement, and_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.schemas import TokenPair
from keel.core.resources import Resources
from keel.core.security.opaque import new_token, token_hash
from keel.models import AuthSession, RefreshToken, User
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


async def end_sessions(
    resources: Resources, session: AsyncSession, condition: ColumnElement[bool], reason: str
) -> list[uuid.UUID]:
    """End every live session matching `condition`; their access tokens stop at once."""
    result = await session.execute(
        update(AuthSession)
        .where(condition, AuthSession.ended_at.is_(None))
        .values(ended_at=utcnow(), end_reason=reason)
        .returning(AuthSession.id)
        .execution_options(synchronize_session=False)
    )
    ended = list(result.scalars())
    if ended:
        await resources.revocations.revoke(ended)
        log.info("sessions_ended", count=len(ended), reason=reason)
    return ended


async def _new_refresh_token(
    resources: Resources, session: AsyncSession, auth_session: AuthSession
) -> str:
    token = new_token()
    session.add(
        RefreshToken(
            session_id=auth_session.id,
            token_hash=token_hash(token),
            expires_at=auth_session.expires_at,
        )
    )
    await session.flush()
    return token


def _pair(resources: Resources, user: User, auth_session: AuthSession, refresh: str) -> TokenPair:
    access, expires_in = resources.access_tokens.issue(user.id, auth_session.id, user.role.value)
    return TokenPair(access_token=access, expires_in=expires_in, refresh_token=refresh)


async def start_session(
    resources: Resources, session: AsyncSession, user: User, client: Client
) -> TokenPair:
    now = utcnow()
    auth_session = AuthSession(
        user_id=user.id,
        created_at=now,
        last_used_at=now,
        expires_at=now + timedelta(days=resources.settings.auth.refresh_token_ttl_days),
        user_agent=(client.user_agent or "")[:512] or None,
        ip=client.ip,
    )
    session.add(auth_session)
    await session.flush()
    refresh = await _new_refresh_token(resources, session, auth_session)
    return _pair(resources, user, auth_session, refresh)


async def rotate(
    resources: Resources, session: AsyncSession, refresh_token: str, client: Client
) -> TokenPair:
    now = utcnow()
    hashed = token_hash(refresh_token)
    spent = await session.execute(
        update(RefreshToken)
        .where(
            RefreshToken.token_hash == hashed,
            RefreshToken.spent_at.is_(None),
            RefreshToken.expires_at > now,
        )
        .values(spent_at=now)
        .returning(RefreshToken.session_id)
        .execution_options(synchronize_session=False)
    )
    session_id = spent.scalar_one_or_none()
    if session_id is None:
        await _refuse_unusable(resources, session, hashed)
    auth_session = await session.get(AuthSession, session_id)
    if auth_session is None or auth_session.ended_at is not None:
        raise InvalidGrant("session ended")
    user = await session.get(User, auth_session.user_id)
    if user is None or not user.is_active:
        raise InvalidGrant("user inactive")
    auth_session.last_used_at = now
    auth_session.ip = client.ip
    refresh = await _new_refresh_token(resources, session, auth_session)
    return _pair(resources, user, auth_session, refresh)


async def _refuse_unusable(resources: Resources, session: AsyncSession, hashed: str) -> None:
    row = (
        await session.execute(
            select(RefreshToken.session_id, RefreshToken.spent_at).where(
                RefreshToken.token_hash == hashed
            )
        )
    ).first()
    if row is not None and row.spent_at is not None:
        log.warning("refresh_token_reused", session_id=str(row.session_id))
        await end_sessions(resources, session, AuthSession.id == row.session_id, "reuse")
        raise InvalidGrant("refresh token reused")
    raise InvalidGrant("refresh token unknown or expired")


async def end_by_refresh_token(
    resources: Resources, session: AsyncSession, refresh_token: str
) -> None:
    session_id = (
        await session.execute(
            select(RefreshToken.session_id).where(
                RefreshToken.token_hash == token_hash(refresh_token)
            )
        )
    ).scalar_one_or_none()
    if session_id is not None:
        await end_sessions(resources, session, AuthSession.id == session_id, "logout")


def live_sessions_of(user_id: uuid.UUID) -> ColumnElement[bool]:
    return and_(
        AuthSession.user_id == user_id,
        AuthSession.ended_at.is_(None),
        AuthSession.expires_at > utcnow(),
    )
