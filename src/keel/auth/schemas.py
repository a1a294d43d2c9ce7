"""Request and response bodies of the auth routes."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, EmailStr, Field

from keel.core.bodies import RequestBody
from keel.models import Role


class UserRead(BaseModel):
    """An account as every answer shows it (the users routes answer with it too)."""

    id: uuid.UUID
    email: str
    full_name: str | None
    role: Role
    is_active: bool
    is_verified: bool
    created_at: datetime
    updated_at: datetime


class RegisterRequest(RequestBody):
    email: EmailStr
    password: str = Field(max_length=1024)
    full_name: str | None = Field(default=None, max_length=200)


class TokenPair(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int
    refresh_token: str


class LogoutRequest(RequestBody):
    refresh_token: str = Field(max_length=512)


class VerifyEmailRequest(RequestBody):
    token: str = Field(max_length=512)


class ForgotPasswordRequest(RequestBody):
    email: EmailStr


class ResetPasswordRequest(RequestBody):
    token: str = Field(max_length=512)
    new_password: str = Field(max_length=1024)


class SessionRead(BaseModel):
    id: uuid.UUID
    created_at: datetime
    last_used_at: datetime
    user_agent: str | None
    ip: str | None
    current: bool
