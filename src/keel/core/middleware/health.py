"""Answer `GET /health` before the framework: it is what load balancers call most.

Liveness touches no dependency and never changes, so it needs no routing, dependency
injection or serialisation. It still passes the request-id, timing, metrics and
security-header layers, which sit outside this one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

HEALTH_PATH = "/health"
_BODY = b'{"status":"ok"}'
_HEADERS = (
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_BODY)).encode()),
)


class _HealthRoute:
    # What the metrics and the access log read the route template from.
    path = HEALTH_PATH


HEALTH_ROUTE = _HealthRoute()


class HealthMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != HEALTH_PATH
            or scope["method"] not in ("GET", "HEAD")
        ):
            await self.app(scope, receive, send)
            return
        scope["route"] = HEALTH_ROUTE
        # A fresh headers list each time: the outer layers append to it.
        await send({"type": "http.response.start", "status": 200, "headers": list(_HEADERS)})
        body = b"" if scope["method"] == "HEAD" else _BODY
        await send({"type": "http.response.body", "body": body})
