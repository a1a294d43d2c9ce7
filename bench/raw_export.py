"""Export baseline: Keel's items table streamed as ndjson by pure Starlette + asyncpg + orjson.

What `export_memory.py` measures Keel's `GET /api/v1/items/export?format=ndjson` against,
in the same run: the same rows, in the same order (created_at, id), with the same fields
and the same bytes per line, but nothing of Keel (no imports from it, no auth, no
middleware, no SQLAlchemy). The rows come from an asyncpg server-side cursor inside a
transaction, `BATCH_ROWS` at a time (Keel's batch size), and each batch is encoded with
orjson into one chunk of the response.

GET /json                -> {"status": "ok"} (readiness)
GET /export              -> every item, one JSON object per line
GET /export?tag=<tag>    -> only items whose tags hold <tag> (the warm-up matches nothing)

Env: RAW_EXPORT_DSN (default postgresql://postgres@127.0.0.1:5432/keel_bench_export),
     RAW_EXPORT_POOL_SIZE (default 2).
Run (from bench/), as bench/floor/raw_starlette.py is run:
  uvicorn raw_export:app --host 127.0.0.1 --port 8005 --workers 1 --loop uvloop \
      --http httptools --no-access-log --log-level warning
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

DSN = os.environ.get("RAW_EXPORT_DSN", "postgresql://postgres@127.0.0.1:5432/keel_bench_export")
POOL_SIZE = int(os.environ.get("RAW_EXPORT_POOL_SIZE", "2"))
BATCH_ROWS = 1000
# The columns in Keel's order (ItemRead, API.md), so dict(record) is the line's object.
COLUMNS = "id, owner_id, title, description, status, tags, version, created_at, updated_at"
EXPORT_SQL = f"SELECT {COLUMNS} FROM items ORDER BY created_at, id"  # noqa: S608 - constant
EXPORT_TAG_SQL = f"SELECT {COLUMNS} FROM items WHERE tags @> $1 ORDER BY created_at, id"  # noqa: S608 - constant
# Keel's options: "Z" for UTC, one line per object; asyncpg's UUID subclass is written as
# str() (orjson only takes uuid.UUID itself), as Keel does.
OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE


class ORJSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def json_endpoint(_request: Request) -> Response:
    return ORJSONResponse({"status": "ok"})


async def _rows(pool: asyncpg.Pool, sql: str, args: tuple[Any, ...]) -> AsyncIterator[bytes]:
    async with pool.acquire() as conn, conn.transaction():
        cursor = await conn.cursor(sql, *args)
        while True:
            records = await cursor.fetch(BATCH_ROWS)
            if not records:
                return
            yield b"".join(
                orjson.dumps(dict(record), option=OPTIONS, default=str) for record in records
            )


async def export_endpoint(request: Request) -> Response:
    tag = request.query_params.get("tag")
    sql, args = (EXPORT_SQL, ()) if tag is None else (EXPORT_TAG_SQL, ([tag],))
    return StreamingResponse(
        _rows(request.app.state.pool, sql, args), media_type="application/x-ndjson"
    )


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb as Python values (the tags list), as SQLAlchemy's asyncpg dialect does for Keel.
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda value: orjson.dumps(value).decode(),
        decoder=orjson.loads,
    )


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(
        DSN, min_size=POOL_SIZE, max_size=POOL_SIZE, init=_init_connection
    )
    try:
        yield
    finally:
        await app.state.pool.close()


app = Starlette(
    routes=[Route("/json", json_endpoint), Route("/export", export_endpoint)],
    lifespan=lifespan,
)
