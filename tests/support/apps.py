"""Running an app of a test's own (other settings, extra routes) with its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from keel.core.jobs.inprocess import InProcessRunner


class JoiningJobs(httpx.AsyncBaseTransport):
    """After each response, wait for the in-process jobs running then (e-mails, say),
    so a test sees their effects as soon as its request has returned."""

    def __init__(self, app: FastAPI, inner: httpx.AsyncBaseTransport) -> None:
        self.app = app
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        resources = getattr(self.app.state, "resources", None)
        if resources is not None and isinstance(resources.jobs, InProcessRunner):
            await resources.jobs.join()
        return response


@asynccontextmanager
async def client_for(
    app: FastAPI, *, base_url: str = "http://testserver", raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """Start `app` (its lifespan opens the database, Redis...) and talk to it over ASGI."""
    transport = JoiningJobs(
        app, httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url=base_url) as client,
    ):
        yield client
