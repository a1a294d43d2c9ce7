"""Single-use e-mail tokens (verification, password reset): only their hash is stored."""

from __future__ import annotations

from datetime import timedelta

from keel.auth import repository
from keel.auth.repository import UserRow
from keel.config import Settings
from keel.core.db import Unit
from keel.core.security.opaque import new_token, token_hash
from keel.models import OneTimePurpose
from keel.models.base import utcnow


def verify_email_lifetime(settings: Settings) -> timedelta:
    return timedelta(hours=settings.auth.verify_email_ttl_hours)


def reset_password_lifetime(settings: Settings) -> timedelta:
    return timedelta(minutes=settings.auth.reset_password_ttl_minutes)


async def issue_one_time_token(
    db: Unit, user: UserRow, purpose: OneTimePurpose, lifetime: timedelta
) -> str:
    """A new token for `user`, bound to the address it is sent to."""
    token = new_token()
    await repository.add_one_time_token(
        db,
        {
            "user_id": user["id"],
            "purpose": purpose,
            "token_hash": token_hash(token),
            "email": user["email"],
            "expires_at": utcnow() + lifetime,
        },
    )
    return token
