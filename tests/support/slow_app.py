"""An app factory for server tests: the real app plus a route that takes its time.

`keel serve --factory tests.support.slow_app:create` runs it (the repository root must be
importable), so a test can hold a request in flight while the server is told to stop.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from keel.config import Settings
from keel.main import create_app

DEFAULT_SECONDS = 1.5


def create() -> FastAPI:
    app = create_app(Settings())

    @app.get("/slow")
    async def slow(seconds: float = DEFAULT_SECONDS) -> dict[str, bool]:
        """Answers after `seconds`: a request that is still running when SIGTERM arrives."""
        await asyncio.sleep(seconds)
        return {"done": True}

    return app
