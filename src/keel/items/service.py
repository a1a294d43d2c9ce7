"""Item rules: who sees and changes what, each operation a fixed number of statements.

Visibility is decided here, once, as the owner a statement is narrowed to: a user's
own items, or (moderators and admins reading, admins writing) anyone's. A change is one
conditional UPDATE (or DELETE) ... RETURNING: visibility, permission and If-Match are
all in its WHERE clause and `version` grows in the statement itself, so two racing
writers can never both succeed against the same version. Only when nothing matched
does a second statement find out why (404, 403 or 412).
"""

from __future__ import annotations

import uuid
from typing import Any

from keel.auth.deps import Principal
from keel.auth.permissions import Permission
from keel.core.broker import Broker
from keel.core.conditional import IfMatch
from keel.core.db import Unit
from keel.core.errors import AppError, Forbidden, NotFound, PreconditionFailed
from keel.core.pagination import CursorCodec, PageParams, Window, paginate
from keel.items import events, repository
from keel.items.repository import ItemRow
from keel.items.schemas import ItemFilters, ItemWrite


def readable_owner(principal: Principal) -> uuid.UUID | None:
    """The owner whose items the caller may read (None: every owner's)."""
    return None if principal.can(Permission.ITEMS_READ_ANY) else principal.user_id


def writable_owner(principal: Principal) -> uuid.UUID | None:
    """The owner whose items the caller may change (None: every owner's)."""
    return None if principal.can(Permission.ITEMS_WRITE_ANY) else principal.user_id


def _listed_owner(principal: Principal, filters: ItemFilters) -> uuid.UUID | None:
    owner = readable_owner(principal)
    if owner is not None and filters.owner_id not in (None, owner):
        raise Forbidden("Only moderators and admins may list other users' items")
    return owner


async def list_page(
    db: Unit,
    cursors: CursorCodec,
    principal: Principal,
    filters: ItemFilters,
    params: PageParams,
) -> Window[Any]:
    query = repository.matching(_listed_owner(principal, filters), filters)
    return await paginate(
        db,
        query.statement,
        params,
        id_column=repository.COLUMNS.id,
        codec=cursors,
        values=query.values,
    )


def export_query(principal: Principal, filters: ItemFilters) -> repository.ListQuery:
    """What an export streams, oldest first; refused (403) before the first byte, not
    mid-stream."""
    return repository.matching(_listed_owner(principal, filters), filters, ordered=True)


async def get(db: Unit, principal: Principal, item_id: uuid.UUID) -> ItemRow:
    item = await repository.find(db, item_id, readable_owner(principal))
    if item is None:
        raise NotFound("Item not found")
    return item


async def create(db: Unit, broker: Broker, principal: Principal, body: ItemWrite) -> ItemRow:
    item = await repository.add(db, principal.user_id, body.model_dump())
    events.publish_after_commit(db, broker, "item.created", item)
    return item


async def _refusal(db: Unit, principal: Principal, item_id: uuid.UUID) -> AppError:
    """Nothing matched a write: the error that says why, in the order a client can act on."""
    item = await get(db, principal, item_id)  # 404 when the caller cannot see it
    if writable_owner(principal) in (None, item["owner_id"]):
        return PreconditionFailed("The item has changed: fetch it again")
    return Forbidden("Only the owner or an admin may change this item")


async def change(
    db: Unit,
    broker: Broker,
    principal: Principal,
    item_id: uuid.UUID,
    values: dict[str, Any],
    precondition: IfMatch,
) -> ItemRow:
    """Apply `values` (all fields for PUT, the sent ones for PATCH); version + 1."""
    item = await repository.change(
        db, item_id, writable_owner(principal), precondition.versions, values
    )
    if item is None:
        raise await _refusal(db, principal, item_id)
    events.publish_after_commit(db, broker, "item.updated", item)
    return item


async def remove(
    db: Unit, broker: Broker, principal: Principal, item_id: uuid.UUID, precondition: IfMatch
) -> None:
    item = await repository.remove(db, item_id, writable_owner(principal), precondition.versions)
    if item is None:
        raise await _refusal(db, principal, item_id)
    events.publish_after_commit(db, broker, "item.deleted", item)
