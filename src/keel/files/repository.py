"""File SQL, nothing else: every statement takes the owner it is narrowed to (None: any
owner), which the service decides. The usage row is the quota's one point of contention:
a conditional UPDATE that concurrent uploads of one user queue on."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypedDict, cast

from sqlalchemy import Select, Table, bindparam, delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from keel.core.db import Unit, prepared
from keel.models import File, StorageUsage

FILES = cast("Table", File.__table__)
COLUMNS = FILES.c
USAGE = cast("Table", StorageUsage.__table__)


class FileRow(TypedDict):
    id: uuid.UUID
    owner_id: uuid.UUID
    filename: str
    content_type: str
    size: int
    sha256: str
    storage_key: str
    created_at: datetime


_FIND_ANY = prepared(select(FILES).where(COLUMNS.id == bindparam("id")))
_FIND_OWNED = prepared(
    select(FILES).where(COLUMNS.id == bindparam("id"), COLUMNS.owner_id == bindparam("owner"))
)
_ALL = prepared(select(FILES))
_OWNED = prepared(select(FILES).where(COLUMNS.owner_id == bindparam("owner")))
_ADD = prepared(insert(FILES).returning(FILES))
_REMOVE_ANY = prepared(delete(FILES).where(COLUMNS.id == bindparam("id")).returning(FILES))
_REMOVE_OWNED = prepared(
    delete(FILES)
    .where(COLUMNS.id == bindparam("id"), COLUMNS.owner_id == bindparam("owner"))
    .returning(FILES)
)
_GROW = prepared(
    update(USAGE)
    .where(USAGE.c.user_id == bindparam("owner"))
    .values(bytes=USAGE.c.bytes + bindparam("size"))
    .returning(USAGE.c.bytes)
)
_GROW_WITHIN = prepared(
    update(USAGE)
    .where(
        USAGE.c.user_id == bindparam("owner"),
        USAGE.c.bytes + bindparam("size") <= bindparam("quota"),
    )
    .values(bytes=USAGE.c.bytes + bindparam("size"))
    .returning(USAGE.c.bytes)
)
# ON CONFLICT DO NOTHING reads the same on PostgreSQL and SQLite.
_START_USAGE = prepared(
    pg_insert(USAGE).values(user_id=bindparam("user_id"), bytes=0).on_conflict_do_nothing()
)
_SHRINK = prepared(
    update(USAGE)
    .where(USAGE.c.user_id == bindparam("owner"))
    .values(bytes=USAGE.c.bytes - bindparam("size"))
)
_KEYS_OF_OWNER = select(COLUMNS.storage_key).where(COLUMNS.owner_id == bindparam("owner"))


def listing(owner: uuid.UUID | None) -> tuple[Select[Any], dict[str, Any]]:
    """The files of `owner` (None: everyone's), for a page."""
    if owner is None:
        return _ALL, {}
    return _OWNED, {"owner": owner}


async def find(db: Unit, file_id: uuid.UUID, owner: uuid.UUID | None) -> FileRow | None:
    if owner is None:
        row = await db.one(_FIND_ANY, {"id": file_id})
    else:
        row = await db.one(_FIND_OWNED, {"id": file_id, "owner": owner})
    return cast("FileRow | None", row)


async def add(db: Unit, values: dict[str, Any]) -> FileRow:
    return cast("FileRow", await db.one(_ADD, values))


async def remove(db: Unit, file_id: uuid.UUID, owner: uuid.UUID | None) -> FileRow | None:
    if owner is None:
        row = await db.one(_REMOVE_ANY, {"id": file_id})
    else:
        row = await db.one(_REMOVE_OWNED, {"id": file_id, "owner": owner})
    return cast("FileRow | None", row)


async def grow_usage(db: Unit, owner: uuid.UUID, size: int, quota: int | None) -> bool:
    """Add `size` to the owner's stored bytes, unless that passes `quota`; False when
    it would. The row is made first if missing (a racing first upload's insert waits,
    then does nothing); then one conditional UPDATE decides: a racing upload waits on
    the row's lock and re-checks the total the first one left."""
    await db.execute(_START_USAGE, {"user_id": owner})
    statement = _GROW if quota is None else _GROW_WITHIN
    return await db.one(statement, {"owner": owner, "size": size, "quota": quota}) is not None


async def shrink_usage(db: Unit, owner: uuid.UUID, size: int) -> None:
    await db.execute(_SHRINK, {"owner": owner, "size": size})


async def keys_of_owner(db: Unit, owner: uuid.UUID) -> list[str]:
    rows = await db.all(_KEYS_OF_OWNER, {"owner": owner})
    return [row["storage_key"] for row in rows]


# The sweep asks about keys in batches of this many: one statement shape, compiled once
# (a shorter batch repeats its last key), since the request path's statement cache
# compiles no expanding IN lists.
KEY_BATCH = 500
_REFERENCED = prepared(
    select(COLUMNS.storage_key).where(
        COLUMNS.storage_key.in_([bindparam(f"key_{n}") for n in range(KEY_BATCH)])
    )
)


async def referenced_keys(db: Unit, keys: Sequence[str]) -> set[str]:
    """Which of `keys` (at most KEY_BATCH, at least one) a file references."""
    if not 0 < len(keys) <= KEY_BATCH:
        raise ValueError(f"between 1 and {KEY_BATCH} keys at a time, not {len(keys)}")
    padded = [*keys, *[keys[-1]] * (KEY_BATCH - len(keys))]
    values = {f"key_{n}": key for n, key in enumerate(padded)}
    return {row["storage_key"] for row in await db.all(_REFERENCED, values)}


def keyset_of_keys(after: str | None, limit: int) -> tuple[Select[Any], dict[str, Any]]:
    """Files' keys in key order, after `after`: the sweep's walk over every row."""
    statement = select(COLUMNS.id, COLUMNS.storage_key, COLUMNS.owner_id).order_by(
        COLUMNS.storage_key
    )
    if after is not None:
        statement = statement.where(COLUMNS.storage_key > after)
    return statement.limit(limit), {}
