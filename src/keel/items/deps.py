"""Dependencies items' routes share: filters, sort orders, the item a path names."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Query

from keel.auth.deps import CurrentPrincipal
from keel.core.db import DbSession
from keel.core.pagination import PageParams, page_params
from keel.items import service
from keel.items.repository import COLUMNS, ItemRow
from keel.items.schemas import TAG_PATTERN, ItemFilters
from keel.models import ItemStatus

ItemPage = Annotated[
    PageParams,
    Depends(
        page_params(
            {
                "created_at": COLUMNS.created_at,
                "updated_at": COLUMNS.updated_at,
                "title": COLUMNS.title,
            }
        )
    ),
]


async def _filters(
    status: Annotated[ItemStatus | None, Query(description="Only items in this status.")] = None,
    tag: Annotated[
        str | None, Query(pattern=TAG_PATTERN, description="Only items with this tag.")
    ] = None,
    q: Annotated[
        str | None,
        Query(min_length=1, max_length=200, description="Title contains (any case)."),
    ] = None,
    owner_id: Annotated[
        uuid.UUID | None,
        Query(description="Only this owner's items (moderators and admins; a user: self)."),
    ] = None,
) -> ItemFilters:
    return ItemFilters(status=status, tag=tag, q=q, owner_id=owner_id)


Filters = Annotated[ItemFilters, Depends(_filters)]


async def _readable_item(item_id: uuid.UUID, principal: CurrentPrincipal, db: DbSession) -> ItemRow:
    return await service.get(db, principal, item_id)


# The item the path names, if the caller may read it; 404 otherwise.
ItemDep = Annotated[ItemRow, Depends(_readable_item)]
