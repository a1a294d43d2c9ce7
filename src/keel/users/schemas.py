"""User bodies: what a caller may send, and the one shape every answer uses."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from keel.auth.schemas import CurrentPassword, Email, NewPassword, UserRead
from keel.core.bodies import FromText, RequestBody
from keel.models import Role

__all__ = [
    "PasswordChange",
    "UserAdminUpdate",
    "UserCreate",
    "UserRead",
    "UserSelfUpdate",
]


class UserSelfUpdate(RequestBody):
    """What a user may change about themselves: never their role."""

    full_name: str | None = Field(default=None, max_length=200)
    email: Email | None = None
    current_password: CurrentPassword | None = None


class PasswordChange(RequestBody):
    current_password: CurrentPassword
    new_password: NewPassword


class UserCreate(RequestBody):
    email: Email
    password: NewPassword
    full_name: str | None = Field(default=None, max_length=200)
    role: Annotated[Role, FromText] = Role.USER
    is_active: bool = True
    is_verified: bool = False


class UserAdminUpdate(RequestBody):
    full_name: str | None = Field(default=None, max_length=200)
    email: Email | None = None
    role: Annotated[Role, FromText] | None = None
    is_active: bool | None = None
    is_verified: bool | None = None
    # Needed only when an admin changes their own e-mail here, as on /users/me.
    current_password: CurrentPassword | None = None
