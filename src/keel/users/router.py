"""User routes (API.md, "Users"): the caller's own account, and administration."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from keel.auth.deps import CurrentPrincipal, CurrentUser, PasswordLogin, Revocations, require
from keel.auth.permissions import Permission
from keel.core.db import DbSession
from keel.core.deps import AppSettings, Cursors, Jobs, Passwords
from keel.core.pagination import Page, PageParams, page_params
from keel.core.routing import KeelRoute
from keel.models import Role
from keel.users import repository, service
from keel.users.schemas import (
    PasswordChange,
    UserAdminUpdate,
    UserCreate,
    UserRead,
    UserSelfUpdate,
)

router = APIRouter(prefix="/api/v1/users", tags=["users"], route_class=KeelRoute)

UserPage = Annotated[
    PageParams,
    Depends(
        page_params(
            {"created_at": repository.COLUMNS.created_at, "email": repository.COLUMNS.email}
        )
    ),
]
_ADMIN_CONFLICTS: dict[int | str, dict[str, Any]] = {
    409: {"description": "The last active admin, or an e-mail another account has"}
}

Reader = Annotated[CurrentPrincipal, Depends(require(Permission.USERS_READ))]
Manager = Annotated[CurrentPrincipal, Depends(require(Permission.USERS_MANAGE))]


@router.get("/me", response_model=UserRead, operation_id="users-me-get")
async def read_me(user: CurrentUser) -> Any:
    """The caller's account."""
    return user


@router.patch(
    "/me",
    response_model=UserRead,
    operation_id="users-me-update",
    responses={
        403: {"description": "An e-mail change without the right `current_password`"},
        409: {"description": "Another account has this e-mail"},
    },
)
async def update_me(
    body: UserSelfUpdate,
    principal: CurrentPrincipal,
    user: CurrentUser,
    db: DbSession,
    passwords: Passwords,
    jobs: Jobs,
    settings: AppSettings,
) -> Any:
    """Change the caller's name or e-mail (the e-mail needs the current password)."""
    return await service.update_self(db, passwords, jobs, settings, principal, user, body)


@router.post(
    "/me/password",
    status_code=204,
    operation_id="users-me-password",
    responses={
        403: {"description": "The current password is wrong, or the caller used an API key"},
        422: {"description": "Invalid input, or a new password the policy refuses"},
    },
)
async def change_password(
    body: PasswordChange,
    principal: PasswordLogin,
    user: CurrentUser,
    db: DbSession,
    passwords: Passwords,
    jobs: Jobs,
    revocations: Revocations,
) -> None:
    """Change the caller's password; their other sessions end."""
    await service.change_own_password(
        db, passwords, jobs, revocations, principal, user, body.current_password, body.new_password
    )


@router.delete(
    "/me",
    status_code=204,
    operation_id="users-me-delete",
    responses={409: {"description": "The caller is the last active admin"}},
)
async def delete_me(
    _principal: PasswordLogin,
    user: CurrentUser,
    db: DbSession,
    jobs: Jobs,
    revocations: Revocations,
) -> None:
    """Delete the caller's account with everything it owns."""
    await service.delete_user(db, jobs, revocations, user)


@router.get("", response_model=Page[UserRead], operation_id="users-list")
async def list_users(
    _reader: Reader,
    db: DbSession,
    cursors: Cursors,
    params: UserPage,
    q: Annotated[str | None, Query(max_length=100, description="E-mail or name contains")] = None,
    role: Role | None = None,
    is_active: bool | None = None,
) -> Any:
    """List users (moderators and admins)."""
    window = await service.list_page(db, cursors, params, q, role, is_active)
    return window.as_page()


@router.post(
    "",
    status_code=201,
    response_model=UserRead,
    operation_id="users-create",
    responses={
        409: {"description": "An account with this e-mail exists"},
        422: {"description": "Invalid input, or a password the policy refuses"},
    },
)
async def create_user(
    body: UserCreate, _manager: Manager, db: DbSession, passwords: Passwords
) -> Any:
    """Create a user (admins)."""
    return await service.create_by_admin(db, passwords, body)


@router.get("/{user_id}", response_model=UserRead, operation_id="users-get")
async def read_user(user_id: uuid.UUID, _reader: Reader, db: DbSession) -> Any:
    """Read any user (moderators and admins)."""
    return await service.get_user(db, user_id)


@router.patch(
    "/{user_id}",
    response_model=UserRead,
    operation_id="users-update",
    responses=_ADMIN_CONFLICTS,
)
async def update_user(
    user_id: uuid.UUID,
    body: UserAdminUpdate,
    manager: Manager,
    db: DbSession,
    passwords: Passwords,
    jobs: Jobs,
    settings: AppSettings,
    revocations: Revocations,
) -> Any:
    """Change any user (admins); deactivation ends the user's sessions at once.

    An admin's own e-mail needs `current_password`, as on /users/me."""
    user = await service.get_user(db, user_id)
    return await service.update_by_admin(
        db, passwords, jobs, settings, revocations, manager, user, body
    )


@router.delete(
    "/{user_id}", status_code=204, operation_id="users-delete", responses=_ADMIN_CONFLICTS
)
async def delete_user(
    user_id: uuid.UUID, _manager: Manager, db: DbSession, jobs: Jobs, revocations: Revocations
) -> None:
    """Delete any user (admins)."""
    user = await service.get_user(db, user_id)
    await service.delete_user(db, jobs, revocations, user)
