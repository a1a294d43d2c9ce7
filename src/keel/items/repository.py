"""Item SQL, nothing else: every statement takes the owner it is narrowed to (None: any
owner), which the service decides; nothing here knows who may do what."""

from __future__ import annotations

import functools
import uuid
from datetime import datetime
from typing import Any, NamedTuple, TypedDict, cast

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
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
# If-Match lists up to this long get a statement compiled once per length.
MAX_PREPARED_VERSIONS = 4


class ItemRow(TypedDict):
    id: uuid.UUID
    owner_id: uuid.UUID
    title: str
    description: str
    status: ItemStatus
    tags: list[str]
    version: int
    created_at: datetime
    updated_at: datetime


# The hot read, built once: by id, and by id within one owner's items.
_FIND_ANY = prepared(select(ITEMS).where(COLUMNS.id == bindparam("id")))
_FIND_OWNED = prepared(
    select(ITEMS).where(COLUMNS.id == bindparam("id"), COLUMNS.owner_id == bindparam("owner"))
)


class ListQuery(NamedTuple):
    """A list statement (one per combination of filters, built and compiled once) and
    the values for its bindparams."""

    statement: Select[Any]
    values: dict[str, Any]


@functools.lru_cache(maxsize=64)
def _matching(
    owned: bool, owner_filter: bool, status: bool, tag: bool, q: bool, ordered: bool
) -> Select[Any]:
    conditions: list[ColumnElement[bool]] = []
    if owned:
        conditions.append(COLUMNS.owner_id == bindparam("owner"))
    if owner_filter:
        conditions.append(COLUMNS.owner_id == bindparam("owner_filter"))
    if status:
        conditions.append(COLUMNS.status == bindparam("status"))
    if tag:
        conditions.append(json_array_contains(COLUMNS.tags, bindparam("tag", type_=String)))
    if q:
        conditions.append(COLUMNS.title.ilike(bindparam("title_pattern"), escape=LIKE_ESCAPE))
    statement = select(ITEMS).where(*conditions)
    if ordered:
        statement = statement.order_by(COLUMNS.created_at, COLUMNS.id)
    return prepared(statement)


def matching(owner: uuid.UUID | None, filters: ItemFilters, *, ordered: bool = False) -> ListQuery:
    """Items of `owner` (None: everyone's) that match the list filters; `ordered`:
    oldest first, as the export streams them."""
    owner_filter = filters.owner_id is not None and filters.owner_id != owner
    statement = _matching(
        owner is not None,
        owner_filter,
        filters.status is not None,
        filters.tag is not None,
        filters.q is not None,
        ordered,
    )
    values: dict[str, Any] = {
        "owner": owner,
        "owner_filter": filters.owner_id,
        "status": filters.status,
        "tag": filters.tag,
        "title_pattern": contains_pattern(filters.q) if filters.q is not None else None,
    }
    return ListQuery(statement, values)


async def find(db: Unit, item_id: uuid.UUID, owner: uuid.UUID | None) -> ItemRow | None:
    if owner is None:
        row = await db.one(_FIND_ANY, {"id": item_id})
    else:
        row = await db.one(_FIND_OWNED, {"id": item_id, "owner": owner})
    return cast("ItemRow | None", row)


_ADD = prepared(insert(ITEMS).returning(ITEMS))


async def add(db: Unit, owner: uuid.UUID, values: dict[str, Any]) -> ItemRow:
    row = await db.one(_ADD, {**values, "owner_id": owner, "version": 1})
    return cast("ItemRow", row)


def _write_statement(kind: str, fields: frozenset[str], owned: bool, versions: int | None) -> Any:
    """An UPDATE (of `fields`) or DELETE of one item, RETURNING it: by id, within the
    owner's items when `owned`, at one of `versions` bound versions (None: any; as
    equalities, not IN, so that each shape is compiled once). Values are bound as
    `item_id`, `owner`, `if_match_<n>`, `new_<field>` and `changed_at` (an UPDATE's
    bindparam may not share its column's name)."""
    conditions = [COLUMNS.id == bindparam("item_id")]
    if owned:
        conditions.append(COLUMNS.owner_id == bindparam("owner"))
    if versions is not None:
        matches = (COLUMNS.version == bindparam(f"if_match_{n}") for n in range(versions))
        conditions.append(or_(false(), *matches))
    if kind == "delete":
        return delete(ITEMS).where(*conditions).returning(ITEMS)
    changes: dict[str, Any] = {field: bindparam(f"new_{field}") for field in sorted(fields)}
    return (
        update(ITEMS)
        .where(*conditions)
        .values(**changes, version=COLUMNS.version + 1, updated_at=bindparam("changed_at"))
        .returning(ITEMS)
    )


@functools.lru_cache(maxsize=256)
def _prepared_write(kind: str, fields: frozenset[str], owned: bool, versions: int | None) -> Any:
    return prepared(_write_statement(kind, fields, owned, versions))


def _write(
    kind: str,
    item_id: uuid.UUID,
    owner: uuid.UUID | None,
    versions: frozenset[int] | None,
    values: dict[str, Any],
) -> tuple[Any, dict[str, Any]]:
    count = None if versions is None else len(versions)
    fields = frozenset(values)
    # An If-Match naming many versions is rare and unbounded: built for the one call.
    if count is not None and count > MAX_PREPARED_VERSIONS:
        statement = _write_statement(kind, fields, owner is not None, count)
    else:
        statement = _prepared_write(kind, fields, owner is not None, count)
    bound: dict[str, Any] = {"item_id": item_id, "owner": owner, "changed_at": utcnow()}
    bound |= {f"if_match_{n}": version for n, version in enumerate(sorted(versions or ()))}
    bound |= {f"new_{field}": value for field, value in values.items()}
    return statement, bound


async def change(
    db: Unit,
    item_id: uuid.UUID,
    owner: uuid.UUID | None,
    versions: frozenset[int] | None,
    values: dict[str, Any],
) -> ItemRow | None:
    """Apply `values` and grow `version` by one, in one statement, if the item is in
    scope and at one of `versions` (None: any); None when nothing matched."""
    statement, bound = _write("update", item_id, owner, versions, values)
    return cast("ItemRow | None", await db.one(statement, bound))


async def remove(
    db: Unit, item_id: uuid.UUID, owner: uuid.UUID | None, versions: frozenset[int] | None
) -> ItemRow | None:
    statement, bound = _write("delete", item_id, owner, versions, {})
    return cast("ItemRow | None", await db.one(statement, bound))
