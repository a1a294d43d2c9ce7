"""Starlette's CORS middleware, with two changes: a refused preflight is answered in the
one error shape (API.md) instead of plain text, and an answer to an origin that is not
allowed carries none of the policy's headers (Starlette added `Allow-Credentials` and
`Expose-Headers` to it all the same)."""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import Message, Send

from keel.core.errors import error_response

_SET_BY_THE_ERROR = frozenset({"content-length", "content-type"})


class KeelCORSMiddleware(CORSMiddleware):
    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        headers = {
            name: value
            for name, value in response.headers.items()
            if name.lower() not in _SET_BY_THE_ERROR
        }
        # Starlette's text names what was refused: "Disallowed CORS origin, method".
        return error_response(400, "BAD_REQUEST", bytes(response.body).decode(), headers=headers)

    async def send(self, message: Message, send: Send, request_headers: Headers) -> None:
        origin = request_headers.get("Origin")
        if (
            message["type"] != "http.response.start"
            or origin is None
            or self.is_allowed_origin(origin=origin)
        ):
            await super().send(message, send, request_headers)
            return
        message.setdefault("headers", [])
        MutableHeaders(scope=message).add_vary_header("Origin")
        await send(message)
