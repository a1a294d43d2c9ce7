"""An app factory for server tests: the real app plus a route that takes its time, and
one that reads through SQLAlchemy's engine (what jobs, readiness and migrations use
beside the request pool).

`keel serve --factory tests.support.slow_app:create` runs it (the repository root must be
importable), so a test can hold a request in flight while the server is told to stop, or
see what the engine's errors become while the database goes away.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from sqlalchemy import text

from keel.config import Settings
from keel.core.db import Database
from keel.main import create_app

DEFAULT_SECONDS = 1.5


def create() -> FastAPI:
    app = create_app(Settings())

    @app.get("/slow")
    async def slow(seconds: float = DEFAULT_SECONDS) -> dict[str, bool]:
        """Answers after `seconds`: a request that is still running when SIGTERM arrives."""
        await asyncio.sleep(seconds)
        return {"done": True}

    @app.get("/engine-ping")
    async def engine_ping(request: Request) -> dict[str, int]:
        """SELECT 1 on SQLAlchemy's engine: its errors, not the request pool's."""
        database: Database = request.app.state.database
        async with database.engine.connect() as connection:
            value = (await connection.execute(text("SELECT 1"))).scalar_one()
        return {"value": value}

    return app
