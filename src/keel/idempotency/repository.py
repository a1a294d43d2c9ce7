"""Idempotency records' SQL, nothing else."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, TypedDict, cast

from sqlalchemy import Table, delete, insert, or_, select, update

from keel.core.db import Unit
from keel.models import IdempotencyRecord

RECORDS = cast("Table", IdempotencyRecord.__table__)
COLUMNS = RECORDS.c


class RecordRow(TypedDict):
    id: uuid.UUID
    request_hash: str
    created_at: datetime
    expires_at: datetime
    status_code: int | None
    response_body: str | None
    response_headers: dict[str, str] | None


async def add(
    db: Unit,
    user_id: uuid.UUID,
    scope: str,
    key: str,
    body_hash: str,
    now: datetime,
    expires_at: datetime,
) -> uuid.UUID:
    """Insert a claim; IntegrityError when the (user, scope, key) is taken."""
    row = await db.one(
        insert(RECORDS)
        .values(
            user_id=user_id,
            scope=scope,
            key=key,
            request_hash=body_hash,
            created_at=now,
            expires_at=expires_at,
        )
        .returning(COLUMNS.id)
    )
    assert row is not None  # noqa: S101 - INSERT ... RETURNING returns the row
    return cast("uuid.UUID", row["id"])


async def find(db: Unit, user_id: uuid.UUID, scope: str, key: str) -> RecordRow | None:
    row = await db.one(
        select(
            COLUMNS.id,
            COLUMNS.request_hash,
            COLUMNS.created_at,
            COLUMNS.expires_at,
            COLUMNS.status_code,
            COLUMNS.response_body,
            COLUMNS.response_headers,
        ).where(COLUMNS.user_id == user_id, COLUMNS.scope == scope, COLUMNS.key == key)
    )
    return cast("RecordRow | None", row)


async def remove(db: Unit, record_id: uuid.UUID, *, only_in_flight: bool = False) -> None:
    statement = delete(RECORDS).where(COLUMNS.id == record_id)
    if only_in_flight:
        statement = statement.where(COLUMNS.status_code.is_(None))
    await db.execute(statement)


async def complete(
    db: Unit, record_id: uuid.UUID, status_code: int, body: str, headers: dict[str, Any]
) -> None:
    await db.execute(
        update(RECORDS)
        .where(COLUMNS.id == record_id)
        .values(status_code=status_code, response_body=body, response_headers=headers)
    )


async def purge(db: Unit, now: datetime, abandoned_before: datetime) -> int:
    """Delete expired records, and claims left by requests that died and were never retried."""
    return await db.execute(
        delete(RECORDS).where(
            or_(
                COLUMNS.expires_at < now,
                COLUMNS.status_code.is_(None) & (COLUMNS.created_at < abandoned_before),
            )
        )
    )
