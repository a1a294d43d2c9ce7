"""Item SQL, nothing else: every statement takes the owner it is narrowed to (None: any
owner), which the service decides; nothing here knows who may do what."""

from __future__ import annotations

import uuid
from typing import Any, TypedDict, cast

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    bindparam,
    delete,
    false,
    insert,
    or_,
    select,
    update,
)

from keel.core.db import Unit, prepared
from keel.core.sql import LIKE_ESCAPE, contains_pattern, json_array_contains
from keel.items.schemas import ItemFilters
from keel.models import Item, ItemStatus
from keel.models.base import utcnow

ITEMS = cast("Table", Item.__table__)
COLUMNS = ITEMS.c


class ItemRow(TypedDict):
    id: uuid.UUID
    owner_id: uuid.UUID
    title: str
    description: str
    status: ItemStatus
    tags: list[str]
    version: int
    created_at: Any
    updated_at: Any


# The hot read, built once: by id, and by id within one owner's items.
_FIND_ANY = prepared(select(ITEMS).where(COLUMNS.id == bindparam("id")))
_FIND_OWNED = prepared(
    select(ITEMS).where(COLUMNS.id == bindparam("id"), COLUMNS.owner_id == bindparam("owner"))
)


def _scope(item_id: uuid.UUID, owner: uuid.UUID | None) -> list[ColumnElement[bool]]:
    conditions = [COLUMNS.id == item_id]
    if owner is not None:
        conditions.append(COLUMNS.owner_id == owner)
    return conditions


def matching(owner: uuid.UUID | None, filters: ItemFilters) -> Select[Any]:
    """Items of `owner` (None: everyone's) that match the list filters."""
    conditions: list[ColumnElement[bool]] = []
    if owner is not None:
        conditions.append(COLUMNS.owner_id == owner)
    if filters.owner_id is not None and filters.owner_id != owner:
        conditions.append(COLUMNS.owner_id == filters.owner_id)
    if filters.status is not None:
        conditions.append(COLUMNS.status == filters.status)
    if filters.tag is not None:
        conditions.append(json_array_contains(COLUMNS.tags, filters.tag))
    if filters.q is not None:
        conditions.append(COLUMNS.title.ilike(contains_pattern(filters.q), escape=LIKE_ESCAPE))
    return select(ITEMS).where(*conditions)


def for_export(owner: uuid.UUID | None, filters: ItemFilters) -> Select[Any]:
    """The matching items in a stable order, for streaming."""
    return matching(owner, filters).order_by(COLUMNS.created_at, COLUMNS.id)


async def find(db: Unit, item_id: uuid.UUID, owner: uuid.UUID | None) -> ItemRow | None:
    if owner is None:
        row = await db.one(_FIND_ANY, {"id": item_id})
    else:
        row = await db.one(_FIND_OWNED, {"id": item_id, "owner": owner})
    return cast("ItemRow | None", row)


async def add(db: Unit, owner: uuid.UUID, values: dict[str, Any]) -> ItemRow:
    row = await db.one(insert(ITEMS).values(owner_id=owner, version=1, **values).returning(ITEMS))
    return cast("ItemRow", row)


def _versions(versions: frozenset[int] | None) -> list[ColumnElement[bool]]:
    if versions is None:
        return []
    # Equalities, not IN: one statement shape per number of versions, compiled once.
    return [or_(false(), *(COLUMNS.version == version for version in sorted(versions)))]


async def change(
    db: Unit,
    item_id: uuid.UUID,
    owner: uuid.UUID | None,
    versions: frozenset[int] | None,
    values: dict[str, Any],
) -> ItemRow | None:
    """Apply `values` and grow `version` by one, in one statement, if the item is in
    scope and at one of `versions` (None: any); None when nothing matched."""
    statement = (
        update(ITEMS)
        .where(*_scope(item_id, owner), *_versions(versions))
        .values(**values, version=COLUMNS.version + 1, updated_at=utcnow())
        .returning(ITEMS)
    )
    return cast("ItemRow | None", await db.one(statement))


async def remove(
    db: Unit, item_id: uuid.UUID, owner: uuid.UUID | None, versions: frozenset[int] | None
) -> ItemRow | None:
    statement = delete(ITEMS).where(*_scope(item_id, owner), *_versions(versions)).returning(ITEMS)
    return cast("ItemRow | None", await db.one(statement))
