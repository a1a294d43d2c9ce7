"""The route class every Keel router uses.

FastAPI treats a body of another content type as raw bytes and fails validation (422);
API.md asks for 415 there, so a JSON route checks the content type before FastAPI
parses the body.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.params import Form
from fastapi.routing import APIRoute

from keel.core.errors import UnsupportedMediaType


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "transfer-encoding" in request.headers


class KeelRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        expects_json = self.body_field is not None and not self._expects_form()
        if not expects_json:
            return handler

        async def json_only_handler(request: Request) -> Response:
            content_type = request.headers.get("content-type")
            if content_type is None:
                if _has_body(request):
                    raise UnsupportedMediaType("Request body must be application/json")
            elif not _is_json(content_type):
                raise UnsupportedMediaType("Request body must be application/json")
            return await handler(request)

        return json_only_handler

    def _expects_form(self) -> bool:
        field_info = getattr(self.body_field, "field_info", None)
        return isinstance(field_info, Form)
