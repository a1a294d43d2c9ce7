"""Starlette's CORS middleware, with a refused preflight answered in the one error shape
(API.md) instead of plain text."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

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
