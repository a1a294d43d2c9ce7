"""The route class every Keel router uses: what each request gets around its endpoint.

- **JSON only.** FastAPI treats a body of another content type as raw bytes and fails
  validation (422); API.md asks for 415, so a JSON route checks the content type first.
- **The request owns the transaction.** The unit of work (`DbSession`) commits once the
  endpoint has answered and its response is serialised, before anything is sent, and
  rolls back when it raises: a client never sees success for a change that did not
  commit, and services only run statements.
- **Conditional requests, declared once.** A route whose response model names an
  `etag_field` (`Versioned` schemas) gets its `ETag` header from the value it returns,
  and a GET whose `If-None-Match` holds that tag is answered 304 without a body.
- **Response hooks.** A dependency may ask to see the serialised response inside the
  transaction, before the commit (idempotency stores it there), so a response is
  serialised once and recorded atomically with the change it reports.
- **Early answers.** A dependency may raise `Answer(response)` to answer in the
  endpoint's place (an idempotent replay); that is a normal answer, not an error.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextvars import ContextVar
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.params import Form
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from keel.core.conditional import etag_value, none_match
from keel.core.db import run_statements_alone, unit_of
from keel.core.dispatch import answer_head, method_not_allowed, shadowed_by_fixed_path
from keel.core.errors import UnsupportedMediaType
from keel.core.request_input import read_json_body, refuse_nul_in_query

ResponseHook = Callable[[Response], Awaitable[None]]

_HOOKS_KEY = "keel.response_hooks"
_ETAG_KEY = "keel.etag"
_SAFE_METHODS = frozenset({"GET", "HEAD"})

# The request an endpoint runs for, so the endpoint's wrapper can read its headers and
# leave the ETag for the handler (the wrapper sees only the endpoint's arguments).
_current_request: ContextVar[Request] = ContextVar("keel_current_request")


class Answer(Exception):
    """Raised by a dependency to answer with `response` instead of running the endpoint."""

    def __init__(self, response: Response) -> None:
        self.response = response
        super().__init__(response.status_code)


def on_response(request: Request, hook: ResponseHook) -> None:
    """Let `hook` see the serialised response, in the request's transaction, before it
    commits (it runs only when the endpoint answered without raising)."""
    request.scope.setdefault(_HOOKS_KEY, []).append(hook)


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


def _check_json(request: Request) -> None:
    content_type = request.headers.get("content-type")
    if content_type is None:
        if _has_body(request):
            raise UnsupportedMediaType("Request body must be application/json")
    elif not _is_json(content_type):
        raise UnsupportedMediaType("Request body must be application/json")


def _field_of(result: Any, field: str) -> Any:
    return result[field] if isinstance(result, Mapping) else getattr(result, field)


def single_statement(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """Declare that the endpoint changes the database with one statement (a conditional
    UPDATE or DELETE ... RETURNING, say): a statement is atomic on its own, so the
    request's unit runs it without BEGIN and COMMIT, two round trips fewer. Statements it
    runs after that one only read (to explain a refusal). Not for a route that also
    stores anything else, such as an idempotency record.

        @router.patch("/{item_id}", response_model=ItemRead)
        @single_statement
        async def update_item(...): ...
    """
    endpoint.keel_single_statement = True  # type: ignore[attr-defined]
    return endpoint


def _tagging(endpoint: Callable[..., Awaitable[Any]], field: str) -> Callable[..., Any]:
    """Wrap an endpoint so that the value it returns sets the ETag and, on a GET whose
    If-None-Match holds it, answers 304 before anything is serialised."""

    @functools.wraps(endpoint)  # FastAPI reads the endpoint's own signature through it
    async def tagged(*args: Any, **values: Any) -> Any:
        result = await endpoint(*args, **values)
        if isinstance(result, Response):
            return result
        request = _current_request.get()
        tag = etag_value(_field_of(result, field))
        request.scope[_ETAG_KEY] = tag
        if request.method in _SAFE_METHODS and none_match(
            request.headers.get("if-none-match"), tag
        ):
            raise Answer(Response(status_code=304, headers={"ETag": tag}))
        return result

    tagged.keel_tagged = True  # type: ignore[attr-defined]
    return tagged


_ETAG_HEADER = {
    "ETag": {
        "description": 'The current version, quoted: `"3"`.',
        "required": True,
        "schema": {"type": "string"},
    }
}
_IF_NONE_MATCH_PARAMETER = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "An ETag you hold: 304 (no body) while it is current.",
    "schema": {"type": "string"},
}


def _summary_of(endpoint: Callable[..., Any]) -> str | None:
    """The first line of the endpoint's docstring: its one-line OpenAPI summary (FastAPI
    would make one of the function's name)."""
    doc = inspect.getdoc(endpoint)
    return doc.split("\n", 1)[0].strip() if doc else None


class KeelRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if not kwargs.get("summary"):
            kwargs["summary"] = _summary_of(endpoint)
        field: str | None = getattr(kwargs.get("response_model"), "etag_field", None)
        tagged = getattr(endpoint, "keel_tagged", False)
        if field is not None and not tagged and inspect.iscoroutinefunction(endpoint):
            endpoint = _tagging(endpoint, field)
            responses = dict(kwargs.get("responses") or {})
            success = kwargs.get("status_code") or 200
            declared = responses.get(success, {})
            headers = {**declared.get("headers", {}), **_ETAG_HEADER}
            responses[success] = {**declared, "headers": headers}
            if _SAFE_METHODS & set(kwargs.get("methods") or ()):
                extra = dict(kwargs.get("openapi_extra") or {})
                extra["parameters"] = [*extra.get("parameters", ()), _IF_NONE_MATCH_PARAMETER]
                kwargs["openapi_extra"] = extra
                responses[304] = {"description": "Not modified", "headers": _ETAG_HEADER}
            kwargs["responses"] = responses
        super().__init__(path, endpoint, **kwargs)

    # Matching and methods (core/dispatch.py): a fixed path beats a template, HEAD is
    # answered wherever GET is, and a 405's Allow names every method of the path.
    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is Match.NONE:
            return match, child_scope
        if shadowed_by_fixed_path(self, scope):
            return Match.NONE, {}
        if match is Match.PARTIAL and scope["method"] == "HEAD" and "GET" in self._methods:
            return Match.FULL, child_scope
        return match, child_scope

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method in self._methods:
            await super().handle(scope, receive, send)
        elif method == "HEAD" and "GET" in self._methods:
            await answer_head(self.app, scope, receive, send)
        else:
            raise method_not_allowed(self.path, self._methods, scope)

    @property
    def _methods(self) -> set[str]:
        return self.methods or set()

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        expects_json = self.body_field is not None and not self._expects_form()
        alone = getattr(self.endpoint, "keel_single_statement", False)

        async def keel_handler(request: Request) -> Response:
            if expects_json:
                _check_json(request)
                await read_json_body(request)
            if b"%00" in request.scope["query_string"]:
                refuse_nul_in_query(request)
            token = _current_request.set(request)
            scope = request.scope
            if alone:
                run_statements_alone(scope)
            try:
                try:
                    response = await handler(request)
                except Answer as answer:
                    response = answer.response
                tag = scope.get(_ETAG_KEY)
                if tag is not None and response.status_code < 300:
                    response.headers["ETag"] = tag
                for hook in scope.get(_HOOKS_KEY, ()):
                    await hook(response)
            except BaseException:
                unit = unit_of(scope)
                if unit is not None:
                    await unit.rollback()
                raise
            finally:
                _current_request.reset(token)
            unit = unit_of(scope)
            if unit is not None:
                await unit.commit()
            return response

        return keel_handler

    def _expects_form(self) -> bool:
        field_info = getattr(self.body_field, "field_info", None)
        return isinstance(field_info, Form)


def mount(app: FastAPI, router: APIRouter) -> None:
    """Add a router's routes to the app's own router, as `app.include_router` would but
    without its per-request layer: FastAPI matches an included router's routes through
    an effective-route context of its own on every request, which profiling put at a
    sixth of an authenticated read. The routes keep every setting they were declared
    with (their paths already carry the router's prefix)."""
    for route in router.routes:
        if isinstance(route, APIWebSocketRoute):
            app.router.add_api_websocket_route(
                route.path,
                route.endpoint,
                name=route.name,
                dependencies=list(route.dependencies or []),
            )
            continue
        if not isinstance(route, APIRoute):
            raise TypeError(f"only API and WebSocket routes can be mounted, not {route!r}")
        app.router.add_api_route(
            route.path,
            route.endpoint,
            response_model=route.response_model,
            status_code=route.status_code,
            tags=list(route.tags or []),
            dependencies=list(route.dependencies or []),
            summary=route.summary,
            description=route.description,
            response_description=route.response_description,
            responses=dict(route.responses or {}),
            deprecated=route.deprecated,
            methods=set(route.methods or ()),
            operation_id=route.operation_id,
            response_model_include=route.response_model_include,
            response_model_exclude=route.response_model_exclude,
            response_model_by_alias=route.response_model_by_alias,
            response_model_exclude_unset=route.response_model_exclude_unset,
            response_model_exclude_defaults=route.response_model_exclude_defaults,
            response_model_exclude_none=route.response_model_exclude_none,
            include_in_schema=route.include_in_schema,
            response_class=route.response_class,
            name=route.name,
            route_class_override=type(route),
            callbacks=route.callbacks,
            openapi_extra=route.openapi_extra,
            generate_unique_id_function=route.generate_unique_id_function,
        )
