"""Request id, Server-Timing, metrics and the access-log line, in one pass.

These four read the same moments of a request (its start, its response start, its end),
so one layer does them all rather than four layers each wrapping `send`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog

from keel.core.request_context import accept_or_make_request_id, set_request_id

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from keel.core.metrics import Metrics

access_log = structlog.get_logger("keel.access")

_UNMATCHED_ROUTE = "<unmatched>"


def route_template(scope: Scope) -> str:
    """The route's path template (never the raw path, which would explode label sets)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else _UNMATCHED_ROUTE


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


class ObservabilityMiddleware:
    def __init__(
        self, app: ASGIApp, metrics: Metrics, skip_log_paths: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.skip_log_paths = skip_log_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        request_id = accept_or_make_request_id(_header(scope, b"x-request-id"))
        set_request_id(request_id)
        request_id_header = (b"x-request-id", request_id.encode("ascii"))
        status_code = 500
        response_bytes = 0
        self.metrics.in_flight.inc()

        async def send_wrapper(message: Message) -> None:
            nonlocal status_code, response_bytes
            if message["type"] == "http.response.start":
                status_code = message["status"]
                elapsed_ms = (time.perf_counter() - started) * 1000
                headers = list(message.get("headers", ()))
                headers.append(request_id_header)
                headers.append((b"server-timing", f"app;dur={elapsed_ms:.1f}".encode()))
                message["headers"] = headers
            elif message["type"] == "http.response.body":
                response_bytes += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            duration = time.perf_counter() - started
            route = route_template(scope)
            method = scope["method"]
            self.metrics.in_flight.dec()
            self.metrics.observe_request(method, route, status_code, duration)
            if scope["path"] not in self.skip_log_paths:
                access_log.info(
                    "request",
                    method=method,
                    path=scope["path"],
                    route=route,
                    status=status_code,
                    duration_ms=round(duration * 1000, 2),
                    bytes=response_bytes,
                    client=scope["client"][0] if scope.get("client") else None,
                )
            set_request_id(None)
