"""Items for tests: one through the model, many at once through a bulk insert."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keel.core.ids import uuid7
from keel.models import Item, ItemStatus
from keel.models.base import utcnow


async def make_item(app: FastAPI, owner_id: uuid.UUID, **fields: Any) -> Item:
    values: dict[str, Any] = {"title": "An item", "owner_id": owner_id, **fields}
    async with app.state.resources.sessionmaker() as session:
        item = Item(**values)
        session.add(item)
        await session.commit()
        return item


async def make_items(
    app: FastAPI, owner_id: uuid.UUID, count: int, **fields: Any
) -> list[dict[str, Any]]:
    """`count` items in one statement, with distinct titles, statuses, tags and times
    (some times repeated, so every sort has ties for the id to break)."""
    start = utcnow() - timedelta(days=1)
    statuses = list(ItemStatus)
    rows = []
    for n in range(count):
        stamp = start + timedelta(milliseconds=(n // 3) * 7)
        rows.append(
            {
                "id": uuid7(),
                "owner_id": owner_id,
                "title": f"item {n % 97:02d} {n:05d}",
                "description": f"number {n}",
                "status": statuses[n % 3],
                "tags": [f"t{n % 5}", "all"],
                "version": 1,
                "created_at": stamp,
                "updated_at": stamp + timedelta(seconds=n % 11),
                **fields,
            }
        )
    await insert_items(app.state.resources.sessionmaker, rows)
    return rows


async def insert_items(
    sessionmaker: async_sessionmaker[AsyncSession], rows: list[dict[str, Any]]
) -> None:
    """Bulk-insert item rows (also for a database a live server uses)."""
    async with sessionmaker() as session:
        for offset in range(0, len(rows), 2000):
            await session.execute(insert(Item), rows[offset : offset + 2000])
        await session.commit()
