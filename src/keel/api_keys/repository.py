"""API key SQL, nothing else (looking a key up to authenticate is auth's)."""

from __future__ import annotations

import uuid
from typing import Any, cast

from sqlalchemy import Select, delete, insert, select

from keel.auth.repository import API_KEYS
from keel.core.db import Row, Unit

COLUMNS = API_KEYS.c
_LISTED = (
    COLUMNS.id,
    COLUMNS.name,
    COLUMNS.prefix,
    COLUMNS.created_at,
    COLUMNS.expires_at,
    COLUMNS.last_used_at,
)


async def add(db: Unit, values: dict[str, Any]) -> Row:
    return cast("Row", await db.one(insert(API_KEYS).values(**values).returning(*_LISTED)))


def owned_by(user_id: uuid.UUID) -> Select[Any]:
    return select(*_LISTED).where(COLUMNS.user_id == user_id)


async def remove(db: Unit, key_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    """Delete the user's key; False when the user has no such key."""
    deleted = await db.execute(
        delete(API_KEYS).where(COLUMNS.id == key_id, COLUMNS.user_id == user_id)
    )
    return deleted > 0
