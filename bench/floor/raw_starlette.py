# Copied unchanged from the project's shared baseline (shared/bench/); only this comment was added.
"""Physical-limit baseline: pure Starlette + asyncpg pool + orjson.

GET /json        -> {"status": "ok"}
GET /user/{id}   -> one primary-key SELECT through an asyncpg pool, row as JSON

Env: BENCH_DSN (default postgresql://postgres@127.0.0.1:5432/bench),
     BENCH_POOL_SIZE (default 10).
Run: uvicorn raw_starlette:app --host 127.0.0.1 --port 8001 --loop uvloop --http httptools --no-access-log
"""
import contextlib
import os

import asyncpg
import orjson
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

DSN = os.environ.get("BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/bench")
POOL_SIZE = int(os.environ.get("BENCH_POOL_SIZE", "10"))
USER_SQL = (
    "SELECT id, email, full_name, is_active, is_superuser, created_at "
    "FROM users WHERE id = $1"
)


class ORJSONResponse(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content)


async def json_endpoint(request):
    return ORJSONResponse({"status": "ok"})


async def user_endpoint(request):
    try:
        user_id = int(request.path_params["id"])
    except ValueError:
        return ORJSONResponse({"detail": "bad id"}, status_code=422)
    async with request.app.state.pool.acquire() as conn:
        row = await conn.fetchrow(USER_SQL, user_id)
    if row is None:
        return ORJSONResponse({"detail": "not found"}, status_code=404)
    return ORJSONResponse(dict(row))


@contextlib.asynccontextmanager
async def lifespan(app):
    app.state.pool = await asyncpg.create_pool(DSN, min_size=POOL_SIZE, max_size=POOL_SIZE)
    try:
        yield
    finally:
        await app.state.pool.close()


app = Starlette(
    routes=[Route("/json", json_endpoint), Route("/user/{id}", user_endpoint)],
    lifespan=lifespan,
)
