"""Sign-in's SQL, nothing else: accounts' credentials, sessions, refresh tokens,
one-time tokens and API-key lookups. Who may do what is decided by the services."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, TypedDict, cast

from sqlalchemy import ColumnElement, Select, Table, bindparam, insert, select, update

from keel.core.db import Row, Unit, prepared
from keel.models import ApiKey, AuthSession, OneTimePurpose, OneTimeToken, RefreshToken, Role, User

USERS = cast("Table", User.__table__)
SESSIONS = cast("Table", AuthSession.__table__)
REFRESH_TOKENS = cast("Table", RefreshToken.__table__)
ONE_TIME_TOKENS = cast("Table", OneTimeToken.__table__)
API_KEYS = cast("Table", ApiKey.__table__)
SESSION_COLUMNS = SESSIONS.c


class UserRow(TypedDict):
    id: uuid.UUID
    email: str
    hashed_password: str
    full_name: str | None
    role: Role
    is_active: bool
    is_verified: bool
    password_changed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class SessionRow(TypedDict):
    id: uuid.UUID
    user_id: uuid.UUID
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    user_agent: str | None
    ip: str | None
    ended_at: datetime | None


class ApiKeyOwner(TypedDict):
    key_id: uuid.UUID
    expires_at: datetime | None
    last_used_at: datetime | None
    user_id: uuid.UUID
    role: Role


# ---------------------------------------------------------------- accounts

_USER_BY_ID = prepared(select(USERS).where(USERS.c.id == bindparam("id")))
_USER_BY_EMAIL = prepared(select(USERS).where(USERS.c.email == bindparam("email")))


async def find_user(db: Unit, user_id: uuid.UUID) -> UserRow | None:
    return cast("UserRow | None", await db.one(_USER_BY_ID, {"id": user_id}))


async def find_user_by_email(db: Unit, email: str) -> UserRow | None:
    return cast("UserRow | None", await db.one(_USER_BY_EMAIL, {"email": email}))


_ADD_USER = prepared(insert(USERS).returning(USERS))


async def add_user(db: Unit, values: dict[str, Any]) -> UserRow:
    """Insert an account; IntegrityError when the e-mail is taken."""
    return cast("UserRow", await db.one(_ADD_USER, values))


async def update_user(db: Unit, user_id: uuid.UUID, values: dict[str, Any]) -> UserRow | None:
    statement = update(USERS).where(USERS.c.id == user_id).values(**values).returning(USERS)
    return cast("UserRow | None", await db.one(statement))


async def any_admin(db: Unit) -> bool:
    found = await db.value(select(USERS.c.id).where(USERS.c.role == Role.ADMIN).limit(1))
    return found is not None


# ---------------------------------------------------------------- sessions


_ADD_SESSION = prepared(insert(SESSIONS).returning(SESSIONS))


async def add_session(db: Unit, values: dict[str, Any]) -> SessionRow:
    return cast("SessionRow", await db.one(_ADD_SESSION, values))


async def end_sessions(
    db: Unit, condition: ColumnElement[bool], now: datetime, reason: str
) -> list[uuid.UUID]:
    """End every live session matching `condition`; the ids of those it ended."""
    rows = await db.all(
        update(SESSIONS)
        .where(condition, SESSIONS.c.ended_at.is_(None))
        .values(ended_at=now, end_reason=reason)
        .returning(SESSIONS.c.id)
    )
    return [row["id"] for row in rows]


def of_user(user_id: uuid.UUID) -> ColumnElement[bool]:
    return SESSIONS.c.user_id == user_id


def the_session(session_id: uuid.UUID) -> ColumnElement[bool]:
    return SESSIONS.c.id == session_id


def session_of_refresh_token(token_hash: str) -> ColumnElement[bool]:
    """The session a refresh token (spent or not) belongs to, as a condition: ending it
    is one UPDATE, with no SELECT first."""
    owner = select(REFRESH_TOKENS.c.session_id).where(REFRESH_TOKENS.c.token_hash == token_hash)
    return SESSIONS.c.id == owner.scalar_subquery()


def live_sessions_of(user_id: uuid.UUID, now: datetime) -> ColumnElement[bool]:
    return (
        (SESSIONS.c.user_id == user_id)
        & SESSIONS.c.ended_at.is_(None)
        & (SESSIONS.c.expires_at > now)
    )


def sessions_matching(condition: ColumnElement[bool]) -> Select[Any]:
    return select(
        SESSIONS.c.id,
        SESSIONS.c.created_at,
        SESSIONS.c.last_used_at,
        SESSIONS.c.user_agent,
        SESSIONS.c.ip,
    ).where(condition)


async def ended_sessions(db: Unit, since: datetime) -> list[Row]:
    """(id, ended_at) of sessions ended after `since`."""
    return await db.all(
        select(SESSIONS.c.id, SESSIONS.c.ended_at).where(SESSIONS.c.ended_at > since)
    )


_SESSION_ENDED = prepared(select(SESSIONS.c.ended_at).where(SESSIONS.c.id == bindparam("id")))


async def session_state(db: Unit, session_id: uuid.UUID) -> Row | None:
    """{ended_at} of a session, or None when it no longer exists."""
    return await db.one(_SESSION_ENDED, {"id": session_id})


# ---------------------------------------------------------------- refresh tokens


_ADD_REFRESH_TOKEN = prepared(insert(REFRESH_TOKENS))


async def add_refresh_token(
    db: Unit, session_id: uuid.UUID, token_hash: str, expires_at: datetime
) -> None:
    await db.execute(
        _ADD_REFRESH_TOKEN,
        {"session_id": session_id, "token_hash": token_hash, "expires_at": expires_at},
    )


# Spending a refresh token and reading what the exchange needs, in one statement: the
# session (if still live) and its user, joined to the token that was just spent.
_SPEND = prepared(
    update(REFRESH_TOKENS)
    .where(
        REFRESH_TOKENS.c.token_hash == bindparam("hash"),
        REFRESH_TOKENS.c.spent_at.is_(None),
        REFRESH_TOKENS.c.expires_at > bindparam("now"),
    )
    .values(spent_at=bindparam("now"))
    .returning(REFRESH_TOKENS.c.session_id)
)


async def spend_refresh_token(db: Unit, token_hash: str, now: datetime) -> uuid.UUID | None:
    """Mark the token spent if it is unspent and unexpired; its session id, or None."""
    row = await db.one(_SPEND, {"hash": token_hash, "now": now})
    return row["session_id"] if row else None


_TOUCH_SESSION = prepared(
    update(SESSIONS)
    .where(SESSIONS.c.id == bindparam("sid"), SESSIONS.c.ended_at.is_(None))
    .values(last_used_at=bindparam("now"), ip=bindparam("client_ip"))
    .returning(SESSIONS.c.expires_at, SESSIONS.c.user_id)
)


async def touch_live_session(
    db: Unit, session_id: uuid.UUID, now: datetime, ip: str | None
) -> Row | None:
    """Record a use of a live session; its {expires_at, user_id}, or None once ended."""
    return await db.one(_TOUCH_SESSION, {"sid": session_id, "now": now, "client_ip": ip})


async def find_refresh_token(db: Unit, token_hash: str) -> Row | None:
    """{session_id, spent_at} of a refresh token, whatever its state."""
    return await db.one(
        select(REFRESH_TOKENS.c.session_id, REFRESH_TOKENS.c.spent_at).where(
            REFRESH_TOKENS.c.token_hash == token_hash
        )
    )


# ---------------------------------------------------------------- one-time tokens


_ADD_ONE_TIME_TOKEN = prepared(insert(ONE_TIME_TOKENS))


async def add_one_time_token(db: Unit, values: dict[str, Any]) -> None:
    await db.execute(_ADD_ONE_TIME_TOKEN, values)


async def verify_address(db: Unit, user_id: uuid.UUID, email: str) -> bool:
    """Mark the account verified if it still has the address; False when it has not."""
    return (
        await db.execute(
            update(USERS)
            .where(USERS.c.id == user_id, USERS.c.email == email)
            .values(is_verified=True)
        )
        > 0
    )


async def redeem_one_time_token(
    db: Unit, token_hash: str, purpose: OneTimePurpose, now: datetime
) -> Row | None:
    """Spend an unused, unexpired token (once, atomically); its {user_id, email}."""
    return await db.one(
        update(ONE_TIME_TOKENS)
        .where(
            ONE_TIME_TOKENS.c.token_hash == token_hash,
            ONE_TIME_TOKENS.c.purpose == purpose,
            ONE_TIME_TOKENS.c.used_at.is_(None),
            ONE_TIME_TOKENS.c.expires_at > now,
        )
        .values(used_at=now)
        .returning(ONE_TIME_TOKENS.c.user_id, ONE_TIME_TOKENS.c.email)
    )


# ---------------------------------------------------------------- API keys

_API_KEY_OWNER = prepared(
    select(
        API_KEYS.c.id.label("key_id"),
        API_KEYS.c.expires_at,
        API_KEYS.c.last_used_at,
        USERS.c.id.label("user_id"),
        USERS.c.role,
    )
    .join(USERS, USERS.c.id == API_KEYS.c.user_id)
    .where(API_KEYS.c.key_hash == bindparam("hash"), USERS.c.is_active.is_(True))
)
_TOUCH_API_KEY = prepared(
    update(API_KEYS).where(API_KEYS.c.id == bindparam("key")).values(last_used_at=bindparam("now"))
)


async def find_api_key_owner(db: Unit, key_hash: str) -> ApiKeyOwner | None:
    """The key and its owner, if the owner is active (expiry is the caller's to judge)."""
    return cast("ApiKeyOwner | None", await db.one(_API_KEY_OWNER, {"hash": key_hash}))


async def touch_api_key(db: Unit, key_id: uuid.UUID, now: datetime) -> None:
    await db.execute(_TOUCH_API_KEY, {"key": key_id, "now": now})
