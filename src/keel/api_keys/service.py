"""API key rules: a key is shown once, kept only as its hash, and acts as its owner."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from keel.api_keys import repository
from keel.core.db import Row, Unit
from keel.core.errors import NotFound
from keel.core.pagination import CursorCodec, PageParams, Window, paginate
from keel.core.security.opaque import new_token, token_hash
from keel.models.base import utcnow

# How much of a key is kept in clear, so a person can tell keys apart in a list.
VISIBLE_CHARS = 8


async def create(
    db: Unit, key_prefix: str, user_id: uuid.UUID, name: str, expires_in_days: int | None
) -> Row:
    """A new key for the user; the answer holds the key itself, which nothing else does."""
    key = new_token(key_prefix)
    expires_at = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
    row = await repository.add(
        db,
        {
            "user_id": user_id,
            "name": name,
            "prefix": key[: len(key_prefix) + VISIBLE_CHARS],
            "key_hash": token_hash(key),
            "expires_at": expires_at,
        },
    )
    return {**row, "key": key}


async def list_page(
    db: Unit, cursors: CursorCodec, user_id: uuid.UUID, params: PageParams
) -> Window[Any]:
    return await paginate(
        db, repository.owned_by(user_id), params, id_column=repository.COLUMNS.id, codec=cursors
    )


async def revoke(db: Unit, user_id: uuid.UUID, key_id: uuid.UUID) -> None:
    if not await repository.remove(db, key_id, user_id):
        raise NotFound("API key not found")
