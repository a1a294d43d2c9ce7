"""GET /items/export: every matching item, streamed from a server-side cursor.

Rows are fetched `BATCH_ROWS` at a time and encoded batch by batch, so memory stays flat
whatever the row count; the query runs in a session of its own that lives as long as
the response streams (the request's session has committed by then).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from typing import Literal

import orjson

from keel.core.db import Database, Row
from keel.items.repository import ListQuery
from keel.items.schemas import ITEM_FIELDS

BATCH_ROWS = 1000

ExportFormat = Literal["ndjson", "csv"]

MEDIA_TYPES: dict[str, str] = {
    "ndjson": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
}

# A spreadsheet reads a cell starting with one of these as a formula (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


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
    async for rows in database.stream(query.statement, BATCH_ROWS, query.values):
        yield _ndjson(rows) if fmt == "ndjson" else _csv(rows, header=False)
