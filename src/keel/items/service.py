"""Item rules: create, read, change and delete, each a fixed number of statements.

A change is one conditional UPDATE (or DELETE) ... RETURNING: visibility, permission and
If-Match are all in its WHERE clause and `version` grows in the statement itself, so two
racing writers can never both succeed against the same version. Only when nothing
matched does a second statement find out why (404, 403 or 412).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncSession

from keel.auth.deps import Principal
from keel.core.conditional import IfMatch
from keel.core.errors import AppError, Forbidden, NotFound, PreconditionFailed
from keel.core.resources import Resources
from keel.items import events, repository
from keel.items.schemas import ItemWrite
from keel.models import Item
from keel.models.base import utcnow


async def create(
    resources: Resources, session: AsyncSession, principal: Principal, body: ItemWrite
) -> Item:
    item = Item(owner_id=principal.user_id, version=1, **body.model_dump())
    session.add(item)
    await session.flush()
    events.publish_after_commit(session, resources.broker, "item.created", item)
    return item


async def get(session: AsyncSession, principal: Principal, item_id: uuid.UUID) -> Item:
    item = (await session.scalars(repository.one_readable(principal, item_id))).one_or_none()
    if item is None:
        raise NotFound("Item not found")
    return item


def _write_conditions(principal: Principal, item_id: uuid.UUID, precondition: IfMatch) -> list[Any]:
    conditions = [Item.id == item_id, *repository.writable_by(principal)]
    if precondition.versions is not None:
        conditions.append(Item.version.in_(precondition.versions))
    return conditions


async def _refusal(session: AsyncSession, principal: Principal, item_id: uuid.UUID) -> AppError:
    """Nothing matched a write: the error that says why, in the order a client can act on."""
    item = await get(session, principal, item_id)  # 404 when the caller cannot see it
    if not repository.writable_by(principal) or item.owner_id == principal.user_id:
        return PreconditionFailed("The item has changed: fetch it again")
    return Forbidden("Only the owner or an admin may change this item")


async def change(
    resources: Resources,
    session: AsyncSession,
    principal: Principal,
    item_id: uuid.UUID,
    values: dict[str, Any],
    precondition: IfMatch,
) -> Item:
    """Apply `values` (all fields for PUT, the sent ones for PATCH); version + 1."""
    statement = (
        update(Item)
        .where(*_write_conditions(principal, item_id, precondition))
        .values(**values, version=Item.version + 1, updated_at=utcnow())
        .returning(Item)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    item = (await session.scalars(statement)).one_or_none()
    if item is None:
        raise await _refusal(session, principal, item_id)
    events.publish_after_commit(session, resources.broker, "item.updated", item)
    return item


async def remove(
    resources: Resources,
    session: AsyncSession,
    principal: Principal,
    item_id: uuid.UUID,
    precondition: IfMatch,
) -> None:
    statement = (
        delete(Item)
        .where(*_write_conditions(principal, item_id, precondition))
        .returning(Item)
        .execution_options(synchronize_session=False)
    )
    item = (await session.scalars(statement)).one_or_none()
    if item is None:
        raise await _refusal(session, principal, item_id)
    events.publish_after_commit(session, resources.broker, "item.deleted", item)
