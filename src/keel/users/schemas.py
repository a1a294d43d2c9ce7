"""User bodies: what a caller may send, and the one shape every answer uses."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from keel.auth.schemas import CurrentPassword, Email, NewPassword, UserRead
from keel.models import Role

__all__ = [
    "PasswordChange",
    "UserAdminUpdate",
    "UserCreate",
    "UserRead",
    "UserSelfUpdate",
]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserSelfUpdate(Body):
    """What a user may change about themselves: never their role."""

    full_name: str | None = Field(default=None, max_length=200)
    email: Email | None = None
    current_password: CurrentPassword | None = None


class PasswordChange(Body):
    current_password: CurrentPassword
    new_password: NewPassword


class UserCreate(Body):
    email: Email
    password: NewPassword
    full_name: str | None = Field(default=None, max_length=200)
    role: Role = Role.USER
    is_active: bool = True
    is_verified: bool = False


class UserAdminUpdate(Body):
    full_name: str | None = Field(default=None, max_length=200)
    email: Email | None = None
    role: Role | None = None
    is_active: bool | None = None
    is_verified: bool | None = None
