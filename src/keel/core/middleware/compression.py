"""Gzip for clients that ask for it, and nothing at all for those that do not.

Starlette's middleware wraps every response, even when the client accepts no gzip;
checking the header first keeps that cost off most API calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.middleware.gzip import GZipMiddleware

if TYPE_CHECKING:
    from starlette.types import Receive, Scope, Send


class GZipWhenAccepted(GZipMiddleware):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"accept-encoding" and b"gzip" in value:
                    await super().__call__(scope, receive, send)
                    return
        await self.app(scope, receive, send)
