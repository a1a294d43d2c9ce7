"""User rules: self-service changes, administration, and the last-admin rule."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.exc import IntegrityError

from keel.auth import repository as accounts
from keel.auth.deps import Principal
from keel.auth.repository import UserRow
from keel.auth.revocation import SessionRevocations
from keel.auth.service import create_user, normalise_email, send_verification, set_password
from keel.auth.sessions import end_sessions
from keel.config import Settings
from keel.core.db import Unit
from keel.core.errors import Conflict, Forbidden, NotFound
from keel.core.jobs import JobQueue
from keel.core.pagination import CursorCodec, PageParams, Window, paginate
from keel.core.security.passwords import PasswordHasher
from keel.files import service as files_service
from keel.models import Role
from keel.users import repository
from keel.users.schemas import UserAdminUpdate, UserCreate, UserSelfUpdate

_TAKEN = "An account with this e-mail already exists"


async def get_user(db: Unit, user_id: uuid.UUID) -> UserRow:
    user = await accounts.find_user(db, user_id)
    if user is None:
        raise NotFound("User not found")
    return user


async def _ensure_not_last_admin(db: Unit, user: UserRow) -> None:
    """409 when `user` is the only active admin (the change would leave none)."""
    if user["role"] != Role.ADMIN or not user["is_active"]:
        return
    if await repository.lock_active_admins(db) <= 1:
        raise Conflict("The last active admin cannot be removed, demoted or deactivated")


def _new_email(user: UserRow, email: str | None) -> str | None:
    """The address `email` normalised, if it changes the user's (409 when taken)."""
    if email is None:
        return None
    email = normalise_email(email)
    # A taken address is refused by the unique index when the UPDATE runs (409).
    return None if email == user["email"] else email


async def _update(db: Unit, user: UserRow, values: dict[str, Any]) -> UserRow:
    if not values:
        return user
    try:
        # The unique index decides races (two accounts taking one address at once): the
        # loser gets 409, not a 500.
        updated = await accounts.update_user(db, user["id"], values)
    except IntegrityError as exc:
        raise Conflict(_TAKEN) from exc
    if updated is None:
        raise NotFound("User not found")
    return updated


async def _check_own_email_change(
    passwords: PasswordHasher, principal: Principal, user: UserRow, current_password: str | None
) -> None:
    """A caller changing their own address proves it is them (ASVS V7.5.1): a password
    sign-in, not an API key, and the current password; 403 otherwise. The address
    receives password resets, so whoever changes it can take the account."""
    if principal.via_api_key:
        raise Forbidden("Changing the e-mail needs a sign-in with a password")
    matches, _ = await passwords.verify(current_password or "", user["hashed_password"])
    if not matches:
        raise Forbidden("The current password is wrong")


async def update_self(
    db: Unit,
    passwords: PasswordHasher,
    jobs: JobQueue,
    settings: Settings,
    principal: Principal,
    user: UserRow,
    body: UserSelfUpdate,
) -> UserRow:
    values: dict[str, Any] = {}
    if "full_name" in body.model_fields_set:
        values["full_name"] = body.full_name
    email = _new_email(user, body.email)
    if email is not None:
        await _check_own_email_change(passwords, principal, user, body.current_password)
        values |= {"email": email, "is_verified": False}
    updated = await _update(db, user, values)
    if email is not None:
        await send_verification(db, jobs, settings, updated)
    return updated


async def change_own_password(
    db: Unit,
    passwords: PasswordHasher,
    jobs: JobQueue,
    revocations: SessionRevocations,
    principal: Principal,
    user: UserRow,
    current_password: str,
    new_password: str,
) -> None:
    matches, _ = await passwords.verify(current_password, user["hashed_password"])
    if not matches:
        raise Forbidden("The current password is wrong")
    await set_password(
        db, passwords, jobs, revocations, user, new_password, keep_session=principal.session_id
    )


async def delete_user(
    db: Unit, jobs: JobQueue, revocations: SessionRevocations, user: UserRow
) -> None:
    await _ensure_not_last_admin(db, user)
    # Their files' rows go with them; the bytes by jobs, after the commit.
    await files_service.forget_owner(db, jobs, user["id"])
    # Record the sessions as ended first, so their access tokens stop at once; the rows
    # then go with the user.
    await end_sessions(db, revocations, accounts.of_user(user["id"]), "account_deleted")
    await repository.remove(db, user["id"])


async def list_page(
    db: Unit,
    cursors: CursorCodec,
    params: PageParams,
    q: str | None,
    role: Role | None,
    is_active: bool | None,
) -> Window[Any]:
    query = repository.matching(q, role, is_active)
    return await paginate(db, query, params, id_column=repository.COLUMNS.id, codec=cursors)


async def create_by_admin(db: Unit, passwords: PasswordHasher, body: UserCreate) -> UserRow:
    return await create_user(
        db,
        passwords,
        email=body.email,
        password=body.password,
        full_name=body.full_name,
        role=body.role,
        is_active=body.is_active,
        is_verified=body.is_verified,
    )


async def update_by_admin(
    db: Unit,
    passwords: PasswordHasher,
    jobs: JobQueue,
    settings: Settings,
    revocations: SessionRevocations,
    principal: Principal,
    user: UserRow,
    body: UserAdminUpdate,
) -> UserRow:
    # An explicit `"role": null` changes nothing (like the other null fields below): it
    # must neither trip the last-admin rule nor end the user's sessions.
    demoted = body.role is not None and body.role != user["role"]
    deactivated = body.is_active is False and user["is_active"]
    if (demoted and user["role"] == Role.ADMIN) or deactivated:
        await _ensure_not_last_admin(db, user)
    values: dict[str, Any] = {}
    if "full_name" in body.model_fields_set:
        values["full_name"] = body.full_name
    email = _new_email(user, body.email)
    if email is not None and user["id"] == principal.user_id:
        # The admin route is no way around /users/me's rule for one's own address.
        await _check_own_email_change(passwords, principal, user, body.current_password)
    if email is not None:
        values |= {"email": email, "is_verified": False}
    for field in ("is_verified", "role", "is_active"):
        value = getattr(body, field)
        if value is not None:
            values[field] = value
    updated = await _update(db, user, values)
    if email is not None:
        await send_verification(db, jobs, settings, updated)
    # Access tokens carry the role, and a deactivated user must be out at once: either
    # change ends the user's sessions, so the next request sees the new state.
    if deactivated or demoted:
        await end_sessions(
            db,
            revocations,
            accounts.of_user(user["id"]),
            "deactivated" if deactivated else "role_changed",
        )
    return updated
