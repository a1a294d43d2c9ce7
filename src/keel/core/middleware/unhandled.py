"""The last net: any exception nothing else handled becomes a plain 500.

It sits inside the request-id and security-header layers (Starlette's own
ServerErrorMiddleware sits outside them all), so even a 500 carries the request id.
The full trace goes to the log; the body says nothing about internals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from keel.core.errors import error_response

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("keel.errors")


class UnhandledErrorMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled_error", method=scope["method"], path=scope["path"])
            if response_started:
                # Headers are gone; the server closes the connection mid-body.
                raise
            response = error_response(500, "INTERNAL_ERROR", "Internal server error")
            await response(scope, receive, send)
