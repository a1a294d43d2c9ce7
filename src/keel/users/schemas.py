"""User bodies: what a caller may send, and the one shape every answer uses."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from keel.auth.schemas import UserRead
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
    email: EmailStr | None = None
    current_password: str | None = Field(default=None, max_length=1024)


class PasswordChange(Body):
    current_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)


class UserCreate(Body):
    email: EmailStr
    password: str = Field(max_length=1024)
    full_name: str | None = Field(default=None, max_length=200)
    role: Role = Role.USER
    is_active: bool = True
    is_verified: bool = False


class UserAdminUpdate(Body):
    full_name: str | None = Field(default=None, max_length=200)
    email: EmailStr | None = None
    role: Role | None = None
    is_active: bool | None = None
    is_verified: bool | None = None
    # Needed only when an admin changes their own e-mail here, as on /users/me.
    current_password: str | None = Field(default=None, max_length=1024)
