"""Request and response bodies of the auth routes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, EmailStr, Field

from keel.core.bodies import RequestBody
from keel.core.security.passwords import MAX_LENGTH, MIN_LENGTH
from keel.models import Role

# The policy in the schema, so that clients (and generated requests) can follow it;
# what a schema cannot say (common passwords, the e-mail's name) is checked beside it.
NewPassword = Annotated[
    str,
    Field(
        min_length=MIN_LENGTH,
        max_length=MAX_LENGTH,
        description=f"{MIN_LENGTH} to {MAX_LENGTH} characters; not a common password, and "
        "not containing the e-mail's local part when that has 3 or more characters.",
    ),
]
# What `format: email` cannot say, said in words: the address must be deliverable.
Email = Annotated[
    EmailStr,
    Field(
        description="Stored in lower case. Not at a special-use domain (RFC 6761: "
        "`.test`, `.localhost`, `.invalid`, `.local`...), which cannot receive mail.",
    ),
]
# A password as it was once set: checked against the stored hash, not the policy.
CurrentPassword = Annotated[str, Field(max_length=1024)]


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
    email: Email
    password: NewPassword
    full_name: str | None = Field(default=None, max_length=200)


class Accepted(BaseModel):
    status: Literal["accepted"] = "accepted"


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
    email: Email


class ResetPasswordRequest(RequestBody):
    token: str = Field(max_length=512)
    new_password: NewPassword


class SessionRead(BaseModel):
    id: uuid.UUID
    created_at: datetime
    last_used_at: datetime
    user_agent: str | None
    ip: str | None
    current: bool
