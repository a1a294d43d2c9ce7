"""User administration's SQL, nothing else (an account's own credentials are auth's:
auth/repository.py)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, func, or_, select, update

from keel.auth.repository import USERS
from keel.core.db import Unit
from keel.core.sql import LIKE_ESCAPE, contains_pattern
from keel.models import Role

COLUMNS = USERS.c


def matching(q: str | None, role: Role | None, is_active: bool | None) -> Select[Any]:
    conditions: list[ColumnElement[bool]] = []
    if q:
        pattern = contains_pattern(q.lower())
        conditions.append(
            or_(
                COLUMNS.email.like(pattern, escape=LIKE_ESCAPE),
                func.lower(COLUMNS.full_name).like(pattern, escape=LIKE_ESCAPE),
            )
        )
    if role is not None:
        conditions.append(COLUMNS.role == role)
    if is_active is not None:
        conditions.append(COLUMNS.is_active.is_(is_active))
    return select(USERS).where(*conditions)


async def lock_active_admins(db: Unit) -> int:
    """Take the write locks of the active admins' rows (the whole database on SQLite)
    with a no-op UPDATE, and count them. Two admins demoting each other at once then
    run one after the other, and the second counts what the first left. (SELECT ...
    FOR UPDATE would do on PostgreSQL; SQLite ignores it.)"""
    rows = await db.all(
        update(USERS)
        .where(COLUMNS.role == Role.ADMIN, COLUMNS.is_active.is_(True))
        .values(updated_at=COLUMNS.updated_at)
        .returning(COLUMNS.id)
    )
    return len(rows)


async def remove(db: Unit, user_id: uuid.UUID) -> None:
    """Delete the account; its sessions, keys, items and files go with it (ON DELETE
    CASCADE)."""
    await db.execute(delete(USERS).where(COLUMNS.id == user_id))
