"""How a request finds its route, beyond Starlette's own matching (API.md, Conventions).

- **A fixed path beats a template.** `DELETE /items/export` is 405 (that path exists,
  for GET), not a 422 from `/items/{item_id}` taking "export" for an id.
- **`Allow` lists every method the path answers.** FastAPI registers one route per
  method group, and Starlette's 405 names only the first route it tried.
- **`HEAD` is answered wherever `GET` is**, with GET's status and headers and no body.
  A streamed body is stopped after its first chunk rather than produced in full and
  thrown away (a HEAD on a large download must not read the whole file).
- **A stray trailing slash is redirected with a relative `Location`** (the canonical
  path and query), never one built from the client's `Host` header.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette._utils import get_route_path
from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse
from starlette.routing import Match

if TYPE_CHECKING:
    from starlette.routing import BaseRoute, Router
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

_TABLE_ATTRIBUTE = "_keel_route_table"


@dataclass(frozen=True)
class _RouteTable:
    route_count: int
    fixed_paths: frozenset[str]
    allow_by_path: dict[str, str]


def _table(router: Router) -> _RouteTable:
    """What the router's routes answer, gathered once (again if routes were added)."""
    routes = router.routes
    table: _RouteTable | None = getattr(router, _TABLE_ATTRIBUTE, None)
    if table is not None and table.route_count == len(routes):
        return table
    fixed: set[str] = set()
    methods_by_path: dict[str, set[str]] = {}
    for route in routes:
        methods: set[str] | None = getattr(route, "methods", None)
        path: str | None = getattr(route, "path", None)
        if not methods or path is None:
            continue
        if not getattr(route, "param_convertors", None):
            fixed.add(path)
        answered = methods_by_path.setdefault(path, set())
        answered |= methods
        if "GET" in methods:
            answered.add("HEAD")
    table = _RouteTable(
        route_count=len(routes),
        fixed_paths=frozenset(fixed),
        allow_by_path={path: ", ".join(sorted(m)) for path, m in methods_by_path.items()},
    )
    setattr(router, _TABLE_ATTRIBUTE, table)
    return table


def shadowed_by_fixed_path(route: BaseRoute, scope: Scope) -> bool:
    """True when `route` is a template and the request's path is one of the router's
    fixed paths: that path's own routes answer it (or refuse its method with 405)."""
    router: Router | None = scope.get("router")
    if router is None or not getattr(route, "param_convertors", None):
        return False
    return get_route_path(scope) in _table(router).fixed_paths


def method_not_allowed(path: str, methods: set[str], scope: Scope) -> HTTPException:
    router: Router | None = scope.get("router")
    allow = _table(router).allow_by_path.get(path) if router is not None else None
    if allow is None:
        allow = ", ".join(sorted(methods | ({"HEAD"} if "GET" in methods else set())))
    return HTTPException(status_code=405, headers={"Allow": allow})


class _BodyNotWanted(Exception):
    """Stops a streamed body once a HEAD request's answer is complete."""


async def answer_head(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run the GET endpoint for a HEAD request, passing on its status and headers and
    ending the answer at the first body message."""
    answered = False

    async def send_headers_only(message: Message) -> None:
        nonlocal answered
        if message["type"] != "http.response.body":
            await send(message)
        elif not answered:
            answered = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            if message.get("more_body", False):
                raise _BodyNotWanted
        else:
            raise _BodyNotWanted

    try:
        await app(scope, receive, send_headers_only)
    except* _BodyNotWanted:
        pass


def install_relative_slash_redirect(router: Router) -> None:
    """Replace Starlette's trailing-slash redirect, which builds an absolute URL from the
    client's `Host` header, with one whose `Location` is the canonical path."""
    router.redirect_slashes = False
    not_found = router.default

    async def redirect_or_not_found(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            location = _canonical_location(router, scope)
            if location is not None:
                await RedirectResponse(location, status_code=307)(scope, receive, send)
                return
        await not_found(scope, receive, send)

    router.default = redirect_or_not_found


def _canonical_location(router: Router, scope: Scope) -> str | None:
    path: str = scope["path"]
    if get_route_path(scope) == "/":
        return None
    other = path.rstrip("/") if path.endswith("/") else path + "/"
    other_scope: dict[str, Any] = {**scope, "path": other}
    if not any(route.matches(other_scope)[0] is not Match.NONE for route in router.routes):
        return None
    # `other` matched one of our routes, so it is one of our paths (never "//host/…").
    query: bytes = scope.get("query_string", b"")
    return f"{other}?{query.decode('latin-1')}" if query else other
