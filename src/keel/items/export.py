"""GET /items/export: every matching item, streamed, oldest first.

Rows are read `BATCH_ROWS` at a time in keyset order (created_at, id), each batch by a
short unit of work of its own, and encoded batch by batch: memory stays flat whatever
the row count, and no pooled connection is held while the client reads, so clients
that read slowly or not at all cannot use up the pool (core/transfers.py bounds them).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from typing import Literal

import orjson

from keel.core.db import Database, Row
from keel.core.pagination import SortOrder, batches
from keel.items.repository import COLUMNS, ListQuery
from keel.items.schemas import ITEM_FIELDS

BATCH_ROWS = 1000

ExportFormat = Literal["ndjson", "csv"]

MEDIA_TYPES: dict[str, str] = {
    "ndjson": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
}

# A spreadsheet reads a cell starting with one of these as a formula (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_OLDEST_FIRST = SortOrder("created_at", COLUMNS.created_at, descending=False, scope="items.export")


def _ndjson(rows: Sequence[Row]) -> bytes:
    lines = (
        orjson.dumps(
            {name: row[name] for name in ITEM_FIELDS},
            option=orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE,
            # asyncpg's UUID subclass is not orjson's uuid.UUID: written as str() is.
            default=str,
        )
        for row in rows
    )
    return b"".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, list):
        text = " ".join(value)
    elif hasattr(value, "isoformat"):
        text = orjson.dumps(value, option=orjson.OPT_UTC_Z).decode().strip('"')
    else:
        text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _csv(rows: Sequence[Row], header: bool) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    if header:
        writer.writerow(ITEM_FIELDS)
    writer.writerows([_cell(row[name]) for name in ITEM_FIELDS] for row in rows)
    return buffer.getvalue().encode()


async def stream_export(
    database: Database, query: ListQuery, fmt: ExportFormat
) -> AsyncIterator[bytes]:
    if fmt == "csv":
        yield _csv([], header=True)
    rows_in_order = batches(
        database,
        query.statement,
        _OLDEST_FIRST,
        id_column=COLUMNS.id,
        size=BATCH_ROWS,
        values=query.values,
    )
    async for rows in rows_in_order:
        yield _ndjson(rows) if fmt == "ndjson" else _csv(rows, header=False)
