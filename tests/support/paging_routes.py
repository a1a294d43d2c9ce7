"""A scratch collection for the pagination tests: its own table and a list route.

The model lives on a DeclarativeBase of its own, so migrations never see it; the tests
create and drop its table.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, ClassVar

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict
from sqlalchemy import String, Uuid, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from keel.core.db import DbSession
from keel.core.pagination import CursorCodec, Page, PageParams, page_params, paginate
from keel.core.routing import KeelRoute
from keel.models.base import UTCDateTime

CODEC = CursorCodec(b"paging-test-secret")


class ScratchBase(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, uuid.UUID: Uuid}


class PagingRow(ScratchBase):
    __tablename__ = "probe_paging_rows"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    created_at: Mapped[datetime]
    name: Mapped[str] = mapped_column(String(40))
    rank: Mapped[int]
    owner: Mapped[str] = mapped_column(String(10))
    note: Mapped[str | None] = mapped_column(String(40))


class OtherRow(ScratchBase):
    """A second collection, whose cursors the first must refuse."""

    __tablename__ = "probe_paging_others"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    created_at: Mapped[datetime]


class OtherRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    created_at: datetime


class RowRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    created_at: datetime
    name: str
    rank: int
    owner: str
    note: str | None


RowPageParams = Annotated[
    PageParams,
    Depends(
        page_params(
            {"created_at": PagingRow.created_at, "name": PagingRow.name, "rank": PagingRow.rank}
        )
    ),
]

router = APIRouter(prefix="/probe/paging", route_class=KeelRoute)


@router.get("/rows")
async def list_rows(
    session: DbSession, page: RowPageParams, owner: str | None = None
) -> Page[RowRead]:
    """List scratch rows, optionally one owner's."""
    query = select(PagingRow.__table__)
    if owner is not None:
        query = query.where(PagingRow.owner == owner)
    window = await paginate(session, query, page, id_column=PagingRow.id, codec=CODEC)
    return Page[RowRead].model_validate(window.as_page())


@router.get("/others")
async def list_others(
    session: DbSession,
    page: Annotated[PageParams, Depends(page_params({"created_at": OtherRow.created_at}))],
) -> Page[OtherRead]:
    """List the other scratch rows."""
    window = await paginate(
        session, select(OtherRow.__table__), page, id_column=OtherRow.id, codec=CODEC
    )
    return Page[OtherRead].model_validate(window.as_page())
