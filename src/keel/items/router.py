"""Item routes (API.md, "Items"): the pattern every resource's router follows.

HTTP only: each route parses, calls the service with what it needs, and returns the
schema. The transaction, the ETag (ItemRead is `Versioned`), 304 on `If-None-Match` and
idempotent replay are the route class's and the dependencies' work, declared, not
written here.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import StreamingResponse

from keel.auth.deps import CurrentPrincipal
from keel.core.conditional import IfMatchHeader
from keel.core.db import AppDatabase, DbSession
from keel.core.deps import AppSettings, Broker, Cursors, Transfers
from keel.core.pagination import Page
from keel.core.routing import KeelRoute, single_statement
from keel.core.transfers import TransferResponse
from keel.idempotency import idempotent
from keel.items import export, service
from keel.items.deps import Filters, ItemDep, ItemPage
from keel.items.schemas import ItemRead, ItemUpdate, ItemWrite

PREFIX = "/api/v1/items"
router = APIRouter(prefix=PREFIX, tags=["items"], route_class=KeelRoute)

_LOCATION = {"description": "The new item.", "required": True, "schema": {"type": "string"}}

# The ETag, 304 and the errors every route meets (401, 422, 503...) are documented
# centrally (core/routing.py, core/openapi.py); these are the items' own.
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"description": "A moderator changing someone else's item"},
    404: {"description": "No such item, or not the caller's"},
}
_OWNER_FILTER_ERROR: dict[int | str, dict[str, Any]] = {
    403: {"description": "A user naming another owner in `owner_id`"},
}


@router.get(
    "", response_model=Page[ItemRead], operation_id="items-list", responses=_OWNER_FILTER_ERROR
)
async def list_items(
    principal: CurrentPrincipal, db: DbSession, cursors: Cursors, params: ItemPage, filters: Filters
) -> Any:
    """The items the caller may read: a user their own, moderators and admins every item."""
    window = await service.list_page(db, cursors, principal, filters, params)
    return window.as_page()


@router.post(
    "",
    status_code=201,
    response_model=ItemRead,
    operation_id="items-create",
    dependencies=[Depends(idempotent(f"POST {PREFIX}"))],
    responses={
        201: {"headers": {"Location": _LOCATION}},
        409: {"description": "The first request with this Idempotency-Key is still running"},
        422: {"description": "Invalid input, or an Idempotency-Key reused with another body"},
    },
)
async def create_item(
    body: ItemWrite, principal: CurrentPrincipal, db: DbSession, broker: Broker, response: Response
) -> Any:
    """Create an item owned by the caller. Safe to retry with an `Idempotency-Key`."""
    item = await service.create(db, broker, principal, body)
    response.headers["Location"] = f"{PREFIX}/{item['id']}"
    return item


@router.get(
    "/export",
    response_class=StreamingResponse,
    operation_id="items-export",
    responses={
        200: {
            "content": {
                "application/x-ndjson": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}},
            },
            "description": "One item per line (ndjson), or a CSV table with a header row.",
        },
        **_OWNER_FILTER_ERROR,
    },
)
async def export_items(
    principal: CurrentPrincipal,
    database: AppDatabase,
    filters: Filters,
    transfers: Transfers,
    settings: AppSettings,
    format: Annotated[  # noqa: A002 - the query parameter's name in API.md
        export.ExportFormat, Query(description="`ndjson` (default) or `csv`.")
    ] = "ndjson",
) -> StreamingResponse:
    """Every item the caller may read that matches the filters, streamed."""
    query = service.export_query(principal, filters)
    return TransferResponse(
        export.stream_export(database, query, format),
        slot=transfers.take(principal.user_id),
        send_timeout=settings.http.send_timeout_seconds,
        media_type=export.MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="items.{format}"'},
    )


@router.get(
    "/{item_id}",  # noqa: FAST003 - ItemDep reads item_id
    response_model=ItemRead,
    operation_id="items-get",
)
async def read_item(item: ItemDep) -> Any:
    """One item; 304 when `If-None-Match` holds its current ETag."""
    return item


@router.put(
    "/{item_id}", response_model=ItemRead, operation_id="items-replace", responses=_WRITE_ERRORS
)
@single_statement
async def replace_item(
    item_id: uuid.UUID,
    body: ItemWrite,
    principal: CurrentPrincipal,
    db: DbSession,
    broker: Broker,
    precondition: IfMatchHeader,
) -> Any:
    """Replace every field; those left out return to their defaults."""
    return await service.change(db, broker, principal, item_id, body.model_dump(), precondition)


@router.patch(
    "/{item_id}", response_model=ItemRead, operation_id="items-update", responses=_WRITE_ERRORS
)
@single_statement
async def update_item(
    item_id: uuid.UUID,
    body: ItemUpdate,
    principal: CurrentPrincipal,
    db: DbSession,
    broker: Broker,
    precondition: IfMatchHeader,
) -> Any:
    """Change the fields sent."""
    return await service.change(db, broker, principal, item_id, body.changes(), precondition)


@router.delete("/{item_id}", status_code=204, operation_id="items-delete", responses=_WRITE_ERRORS)
@single_statement
async def delete_item(
    item_id: uuid.UUID,
    principal: CurrentPrincipal,
    db: DbSession,
    broker: Broker,
    precondition: IfMatchHeader,
) -> None:
    """Delete the item."""
    await service.remove(db, broker, principal, item_id, precondition)
