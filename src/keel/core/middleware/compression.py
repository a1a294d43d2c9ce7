"""Gzip for clients that ask for it, and nothing at all for those that do not.

Starlette's middleware wraps every response, even when the client accepts no gzip;
checking the header first keeps that cost off most API calls. Every answer says
`Vary: Accept-Encoding`, compressed or not: a shared cache must not hand a gzipped body
to a client that did not ask for one, nor the reverse. A response marked
`Cache-Control: no-transform` (a file download, whose length, ranges and strong ETag
describe its bytes exactly) is passed on as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.gzip import GZipMiddleware, GZipResponder

if TYPE_CHECKING:
    from starlette.types import Message, Receive, Scope, Send


class GZipWhenAccepted(GZipMiddleware):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _varying(send)
        for name, value in scope["headers"]:
            if name == b"accept-encoding" and b"gzip" in value:
                responder = _UnlessNoTransform(
                    self.app,
                    self.minimum_size,
                    compresslevel=self.compresslevel,
                    thread_minimum_size=self.thread_minimum_size,
                    exclude_content_types=self.exclude_content_types,
                )
                await responder(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _varying(send: Send) -> Send:
    async def send_with_vary(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            if "accept-encoding" not in headers.get("vary", "").lower():
                headers.add_vary_header("Accept-Encoding")
        await send(message)

    return send_with_vary


class _UnlessNoTransform(GZipResponder):
    passing_through = False

    async def send_with_compression(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            cache_control = Headers(raw=message.get("headers", [])).get("cache-control", "")
            self.passing_through = "no-transform" in cache_control.lower()
        if self.passing_through:
            await self.send(message)
            return
        await super().send_with_compression(message)
