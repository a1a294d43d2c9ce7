# Copied unchanged from the project's shared baseline (shared/bench/); only this comment was added.
"""FastAPI baseline: pydantic response_model + Depends-provided asyncpg connection.

GET /json        -> {"status": "ok"} via response_model
GET /user/{id}   -> one primary-key SELECT, connection from the pool via Depends,
                    validated/serialized through a pydantic response_model

Env: BENCH_DSN, BENCH_POOL_SIZE (as raw_starlette.py).
Run: uvicorn fastapi_hello:app --host 127.0.0.1 --port 8002 --loop uvloop --http httptools --no-access-log
"""
import contextlib
import os
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

import asyncpg
from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel

DSN = os.environ.get("BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/bench")
POOL_SIZE = int(os.environ.get("BENCH_POOL_SIZE", "10"))
USER_SQL = (
    "SELECT id, email, full_name, is_active, is_superuser, created_at "
    "FROM users WHERE id = $1"
)


class Status(BaseModel):
    status: str


class UserOut(BaseModel):
    id: int
    email: str
    full_name: str | None = None
    is_active: bool
    is_superuser: bool
    created_at: datetime


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.pool = await asyncpg.create_pool(DSN, min_size=POOL_SIZE, max_size=POOL_SIZE)
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


async def get_conn(request: Request) -> AsyncIterator[asyncpg.Connection]:
    async with request.app.state.pool.acquire() as conn:
        yield conn


Conn = Annotated[asyncpg.Connection, Depends(get_conn)]


@app.get("/json", response_model=Status)
async def json_endpoint():
    return {"status": "ok"}


@app.get("/user/{user_id}", response_model=UserOut)
async def user_endpoint(user_id: int, conn: Conn):
    row = await conn.fetchrow(USER_SQL, user_id)
    if row is None:
        raise HTTPException(status_code=404, detail="not found")
    return dict(row)
