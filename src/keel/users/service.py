"""User rules: self-service changes, administration, and the last-admin rule."""

from __future__ import annotations

import uuid

from sqlalchemy import ColumnElement, Select, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.deps import Principal
from keel.auth.service import create_user, normalise_email, send_verification, set_password
from keel.auth.sessions import end_sessions
from keel.core.errors import Conflict, Forbidden, NotFound
from keel.core.resources import Resources
from keel.core.sql import LIKE_ESCAPE, contains_pattern
from keel.models import AuthSession, Role, User
from keel.users.schemas import UserAdminUpdate, UserCreate, UserSelfUpdate


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound("User not found")
    return user


async def _ensure_not_last_admin(session: AsyncSession, user: User) -> None:
    """409 when `user` is the only active admin (the change would leave none)."""
    if user.role != Role.ADMIN or not user.is_active:
        return
    # Two admins demoting each other at once must not both pass this check. A no-op
    # UPDATE (not SELECT ... FOR UPDATE, which SQLite ignores) takes the write locks
    # first: the active admins' rows on PostgreSQL, the database on SQLite. The other
    # request then waits for this one to commit and counts what it left.
    admins = (
        await session.execute(
            update(User)
            .where(User.role == Role.ADMIN, User.is_active.is_(True))
            .values(updated_at=User.updated_at)
            .returning(User.id)
            .execution_options(synchronize_session=False)
        )
    ).all()
    if len(admins) <= 1:
        raise Conflict("The last active admin cannot be removed, demoted or deactivated")


async def _change_email(
    resources: Resources, session: AsyncSession, user: User, email: str
) -> None:
    email = normalise_email(email)
    if email == user.email:
        return
    taken = await session.scalar(select(func.count()).where(User.email == email))
    if taken:
        raise Conflict("An account with this e-mail already exists")
    user.email = email
    user.is_verified = False
    try:
        # The unique index decides races (two accounts taking one address at once): the
        # loser gets 409, not a 500.
        await session.flush()
    except IntegrityError as exc:
        raise Conflict("An account with this e-mail already exists") from exc
    await send_verification(resources, session, user)


async def update_self(
    resources: Resources,
    session: AsyncSession,
    principal: Principal,
    user: User,
    body: UserSelfUpdate,
) -> User:
    changes = body.model_dump(exclude_unset=True)
    if "full_name" in changes:
        user.full_name = body.full_name
    if body.email is not None and normalise_email(body.email) != user.email:
        if principal.via_api_key:
            raise Forbidden("Changing the e-mail needs a sign-in with a password")
        matches, _ = await resources.passwords.verify(
            body.current_password or "", user.hashed_password
        )
        if not matches:
            raise Forbidden("The current password is wrong")
        await _change_email(resources, session, user, body.email)
    await session.flush()
    return user


async def change_own_password(
    resources: Resources,
    session: AsyncSession,
    principal: Principal,
    user: User,
    current_password: str,
    new_password: str,
) -> None:
    matches, _ = await resources.passwords.verify(current_password, user.hashed_password)
    if not matches:
        raise Forbidden("The current password is wrong")
    await set_password(resources, session, user, new_password, keep_session=principal.session_id)


async def delete_user(resources: Resources, session: AsyncSession, user: User) -> None:
    await _ensure_not_last_admin(session, user)
    # Record the sessions as ended first, so their access tokens stop at once; the rows
    # then go with the user (ON DELETE CASCADE), as do items, files and keys.
    await end_sessions(resources, session, AuthSession.user_id == user.id, "account_deleted")
    await session.execute(delete(User).where(User.id == user.id))


def list_query(q: str | None, role: Role | None, is_active: bool | None) -> Select[User]:
    conditions: list[ColumnElement[bool]] = []
    if q:
        pattern = contains_pattern(q.lower())
        conditions.append(
            or_(
                User.email.like(pattern, escape=LIKE_ESCAPE),
                func.lower(User.full_name).like(pattern, escape=LIKE_ESCAPE),
            )
        )
    if role is not None:
        conditions.append(User.role == role)
    if is_active is not None:
        conditions.append(User.is_active.is_(is_active))
    return select(User).where(*conditions)


async def create_by_admin(resources: Resources, session: AsyncSession, body: UserCreate) -> User:
    return await create_user(
        resources.passwords,
        session,
        email=body.email,
        password=body.password,
        full_name=body.full_name,
        role=body.role,
        is_active=body.is_active,
        is_verified=body.is_verified,
    )


async def update_by_admin(
    resources: Resources, session: AsyncSession, user: User, body: UserAdminUpdate
) -> User:
    changes = body.model_dump(exclude_unset=True)
    # An explicit `"role": null` changes nothing (like the other null fields below): it
    # must neither trip the last-admin rule nor end the user's sessions.
    demoted = body.role is not None and body.role != user.role
    deactivated = changes.get("is_active") is False and user.is_active
    if (demoted and user.role == Role.ADMIN) or deactivated:
        await _ensure_not_last_admin(session, user)
    if "full_name" in changes:
        user.full_name = body.full_name
    if body.email is not None:
        await _change_email(resources, session, user, body.email)
    if body.is_verified is not None:
        user.is_verified = body.is_verified
    if body.role is not None:
        user.role = body.role
    if body.is_active is not None:
        user.is_active = body.is_active
    # Access tokens carry the role, and a deactivated user must be out at once: either
    # change ends the user's sessions, so the next request sees the new state.
    if deactivated or demoted:
        await end_sessions(
            resources,
            session,
            AuthSession.user_id == user.id,
            "deactivated" if deactivated else "role_changed",
        )
    await session.flush()
    return user
