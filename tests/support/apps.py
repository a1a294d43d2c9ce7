"""Running an app of a test's own (other settings, extra routes) with its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI


@asynccontextmanager
async def client_for(
    app: FastAPI, *, base_url: str = "http://testserver", raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """Start `app` (its lifespan opens the database, Redis...) and talk to it over ASGI."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url=base_url) as client,
    ):
        yield client
