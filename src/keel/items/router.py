"""Item routes (API.md, "Items"): the pattern every resource's router follows."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from keel.auth.deps import CurrentPrincipal
from keel.core.conditional import IfMatchHeader, IfNoneMatchHeader, etag, none_match
from keel.core.db import DbSession
from keel.core.idempotency import IdempotentRequest, idempotent
from keel.core.pagination import Page, paginate
from keel.core.resources import resources_of
from keel.core.routing import KeelRoute
from keel.items import export, repository, service
from keel.items.deps import Filters, ItemDep, ItemPage
from keel.items.schemas import ItemRead, ItemUpdate, ItemWrite
from keel.models import Item

PREFIX = "/api/v1/items"
router = APIRouter(prefix=PREFIX, tags=["items"], route_class=KeelRoute)

Idempotency = Annotated[IdempotentRequest, Depends(idempotent(f"POST {PREFIX}"))]

_ETAG_HEADER = {"ETag": {"description": 'The item\'s version, quoted: `"3"`.'}}
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"description": "A moderator changing someone else's item"},
    404: {"description": "No such item, or not the caller's"},
    412: {"description": "`If-Match` names a version that is no longer current"},
}


def _item_response(item: Item, status_code: int = 200, **headers: str) -> Response:
    body = ItemRead.model_validate(item).model_dump_json().encode()
    return Response(
        body,
        status_code=status_code,
        media_type="application/json",
        headers={"ETag": etag(item.version), **headers},
    )


@router.get("", response_model=Page[ItemRead])
async def list_items(
    principal: CurrentPrincipal,
    session: DbSession,
    request: Request,
    params: ItemPage,
    filters: Filters,
) -> Any:
    """The items the caller may read: a user their own, moderators and admins every item."""
    window = await paginate(
        session,
        repository.list_query(principal, filters),
        params,
        id_column=Item.id,
        codec=resources_of(request).cursors,
    )
    return Page[ItemRead].of(window)


@router.post(
    "",
    status_code=201,
    response_model=ItemRead,
    responses={
        201: {"headers": {**_ETAG_HEADER, "Location": {"description": "The new item."}}},
        409: {"description": "The first request with this Idempotency-Key is still running"},
    },
)
async def create_item(
    body: ItemWrite,
    principal: CurrentPrincipal,
    session: DbSession,
    request: Request,
    idempotency: Idempotency,
) -> Response:
    """Create an item owned by the caller. Safe to retry with an `Idempotency-Key`."""
    if idempotency.replay is not None:
        return idempotency.replay
    item = await service.create(resources_of(request), session, principal, body)
    response = _item_response(item, 201, Location=f"{PREFIX}/{item.id}")
    await idempotency.save(session, response)
    return response


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/x-ndjson": {}, "text/csv": {}},
            "description": "One item per line (ndjson), or a CSV table with a header row.",
        }
    },
)
async def export_items(
    principal: CurrentPrincipal,
    request: Request,
    filters: Filters,
    format: Annotated[  # noqa: A002 - the query parameter's name in API.md
        export.ExportFormat, Query(description="`ndjson` (default) or `csv`.")
    ] = "ndjson",
) -> StreamingResponse:
    """Every item the caller may read that matches the filters, streamed."""
    query = repository.export_query(principal, filters)  # 403 raised here, not mid-stream
    return StreamingResponse(
        export.stream_export(resources_of(request).sessionmaker, query, format),
        media_type=export.MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="items.{format}"'},
    )


@router.get(
    "/{item_id}",  # noqa: FAST003 - ItemDep reads item_id
    response_model=ItemRead,
    responses={200: {"headers": _ETAG_HEADER}, 304: {"description": "Not modified"}},
)
async def read_item(item: ItemDep, if_none_match: IfNoneMatchHeader = None) -> Response:
    """One item; 304 when `If-None-Match` holds its current ETag."""
    if none_match(if_none_match, item.version):
        return Response(status_code=304, headers={"ETag": etag(item.version)})
    return _item_response(item)


@router.put("/{item_id}", response_model=ItemRead, responses=_WRITE_ERRORS)
async def replace_item(
    item_id: uuid.UUID,
    body: ItemWrite,
    principal: CurrentPrincipal,
    session: DbSession,
    request: Request,
    precondition: IfMatchHeader,
) -> Response:
    """Replace every field; those left out return to their defaults."""
    item = await service.change(
        resources_of(request), session, principal, item_id, body.model_dump(), precondition
    )
    return _item_response(item)


@router.patch("/{item_id}", response_model=ItemRead, responses=_WRITE_ERRORS)
async def update_item(
    item_id: uuid.UUID,
    body: ItemUpdate,
    principal: CurrentPrincipal,
    session: DbSession,
    request: Request,
    precondition: IfMatchHeader,
) -> Response:
    """Change the fields sent."""
    item = await service.change(
        resources_of(request), session, principal, item_id, body.changes(), precondition
    )
    return _item_response(item)


@router.delete("/{item_id}", status_code=204, responses=_WRITE_ERRORS)
async def delete_item(
    item_id: uuid.UUID,
    principal: CurrentPrincipal,
    session: DbSession,
    request: Request,
    precondition: IfMatchHeader,
) -> None:
    """Delete the item."""
    await service.remove(resources_of(request), session, principal, item_id, precondition)
