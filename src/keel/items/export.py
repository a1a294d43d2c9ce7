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

# Rows per batch (one short query each), and bytes per piece sent: what one export
# holds in memory while its client reads is a batch (up to about 1 MB at the largest
# items) and a piece.
BATCH_ROWS = 100
CHUNK_BYTES = 64 * 1024

ExportFormat = Literal["ndjson", "csv"]

MEDIA_TYPES: dict[str, str] = {
    "ndjson": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
}

# A spreadsheet reads a cell starting with one of these as a formula (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_OLDEST_FIRST = SortOrder("created_at", COLUMNS.created_at, descending=False, scope="items.export")


def _ndjson(row: Row) -> bytes:
    return orjson.dumps(
        {name: row[name] for name in ITEM_FIELDS},
        option=orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE,
        # asyncpg's UUID subclass is not orjson's uuid.UUID: written as str() is.
        default=str,
    )


def _cell(value: object) -> str:
    if isinstance(value, list):
        text = " ".join(value)
    elif hasattr(value, "isoformat"):
        text = orjson.dumps(value, option=orjson.OPT_UTC_Z).decode().strip('"')
    else:
        text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _csv_line(cells: Sequence[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(cells)
    return buffer.getvalue().encode()


def _csv(row: Row) -> bytes:
    return _csv_line([_cell(row[name]) for name in ITEM_FIELDS])


async def stream_export(
    database: Database, query: ListQuery, fmt: ExportFormat
) -> AsyncIterator[bytes]:
    """The export's bytes in pieces of about `CHUNK_BYTES`: a client that stops reading
    leaves at most one batch of rows and one piece waiting in memory."""
    if fmt == "csv":
        yield _csv_line(ITEM_FIELDS)
    encode = _ndjson if fmt == "ndjson" else _csv
    rows_in_order = batches(
        database,
        query.statement,
        _OLDEST_FIRST,
        id_column=COLUMNS.id,
        size=BATCH_ROWS,
        values=query.values,
    )
    piece: list[bytes] = []
    size = 0
    async for rows in rows_in_order:
        for row in rows:
            line = encode(row)
            piece.append(line)
            size += len(line)
            if size >= CHUNK_BYTES:
                yield b"".join(piece)
                piece, size = [], 0
    if piece:
        yield b"".join(piece)
