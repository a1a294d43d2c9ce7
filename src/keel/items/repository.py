"""Item queries, each starting from what the caller may see."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ColumnElement, Select, select

from keel.auth.deps import Principal
from keel.auth.permissions import Permission
from keel.core.errors import Forbidden
from keel.core.sql import LIKE_ESCAPE, contains_pattern, json_array_contains
from keel.items.schemas import ItemFilters
from keel.models import Item


def readable_by(principal: Principal) -> list[ColumnElement[bool]]:
    """Conditions limiting items to those the caller may read."""
    if principal.can(Permission.ITEMS_READ_ANY):
        return []
    return [Item.owner_id == principal.user_id]


def writable_by(principal: Principal) -> list[ColumnElement[bool]]:
    """Conditions limiting items to those the caller may change or delete."""
    if principal.can(Permission.ITEMS_WRITE_ANY):
        return []
    return [Item.owner_id == principal.user_id]


def matching(principal: Principal, filters: ItemFilters) -> list[ColumnElement[bool]]:
    """Visibility and the list filters; a user naming another owner is 403."""
    conditions = readable_by(principal)
    if filters.owner_id is not None:
        if filters.owner_id != principal.user_id and not principal.can(Permission.ITEMS_READ_ANY):
            raise Forbidden("Only moderators and admins may list other users' items")
        conditions.append(Item.owner_id == filters.owner_id)
    if filters.status is not None:
        conditions.append(Item.status == filters.status)
    if filters.tag is not None:
        conditions.append(json_array_contains(Item.tags, filters.tag))
    if filters.q is not None:
        conditions.append(Item.title.ilike(contains_pattern(filters.q), escape=LIKE_ESCAPE))
    return conditions


def list_query(principal: Principal, filters: ItemFilters) -> Select[Item]:
    return select(Item).where(*matching(principal, filters))


def export_query(principal: Principal, filters: ItemFilters) -> Select[Any]:
    """Plain rows (no ORM objects) in a stable order, for streaming."""
    return (
        select(*Item.__table__.columns)
        .where(*matching(principal, filters))
        .order_by(Item.created_at, Item.id)
    )


def one_readable(principal: Principal, item_id: uuid.UUID) -> Select[Item]:
    return select(Item).where(Item.id == item_id, *readable_by(principal))
