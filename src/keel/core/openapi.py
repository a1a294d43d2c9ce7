"""The OpenAPI document, completed from what each route declares and depends on.

FastAPI documents a route's success answer and a 422 in a shape Keel never sends. The
errors a route can answer follow from what it depends on, so they are declared where
they are raised, once: a dependency marked `@answers(401)` (the credential check) adds
401 to every route that depends on it, however deep. On top of those marks, a few rules
hold for every route: parameters or a body can be invalid (422), a body can be too
large (413) or, on a JSON route, of another type (415), a path id can name nothing
(404). `complete_openapi` turns all of it into responses in the one error shape (the
`Error` component), with the headers that go with them, and sets each operation's
security from the credentials its dependencies accept (`@secured_by`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_flat_params
from fastapi.openapi.utils import get_openapi
from fastapi.params import Form
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

F = TypeVar("F", bound=Callable[..., Any])

_ANSWERS = "keel_answers"
_RATE_LIMITED = "keel_rate_limited"
_SECURED_BY = "keel_secured_by"
_SCHEMAS = "#/components/schemas/"
_HEADERS = "#/components/headers/"

# Security scheme names. FastAPI names the OAuth2 one after its class; the others are ours.
OAUTH2 = "OAuth2PasswordBearer"
BEARER = "BearerToken"
API_KEY = "ApiKeyHeader"


class ErrorDetail(BaseModel):
    loc: list[str | int] = Field(description="Where: `body`, `query`, `header`..., then the path.")
    msg: str
    type: str


class ErrorInfo(BaseModel):
    code: str = Field(description="`NOT_FOUND`, `VALIDATION_ERROR`...: see docs/API.md.")
    message: str
    request_id: str = Field(description="The request's `X-Request-ID`.")
    details: list[ErrorDetail] = Field(description="One entry per invalid field; may be empty.")


class Error(BaseModel):
    """Every error answer's body (the token endpoint's 400 excepted: RFC 6749 §5.2)."""

    error: ErrorInfo


def answers(*statuses: int, rate_limit: bool = False) -> Callable[[F], F]:
    """Declare the error statuses a dependency (or an endpoint) may answer with; every
    route depending on it documents them. `rate_limit`: it enforces a rate limit, whose
    `RateLimit-*` headers every answer of the route carries (another 429, such as a
    busy transfer slot, carries none)."""

    def mark(function: F) -> F:
        setattr(function, _ANSWERS, frozenset(getattr(function, _ANSWERS, ())) | set(statuses))
        if rate_limit:
            setattr(function, _RATE_LIMITED, True)
        return function

    return mark


def secured_by(*schemes: str) -> Callable[[F], F]:
    """Declare the credentials a dependency accepts (security scheme names); a route
    documents those that every such dependency of it accepts."""

    def mark(function: F) -> F:
        setattr(function, _SECURED_BY, tuple(schemes))
        return function

    return mark


_DESCRIPTIONS = {
    400: "Malformed, though not invalid (a tampered cursor, a bad token in the body)",
    401: "No credentials, or malformed, expired or revoked ones",
    403: "Authenticated, but not allowed",
    404: "No such resource, or one the caller may not know exists",
    409: "Conflict with the current state",
    412: "`If-Match` names no current version: nothing changed",
    413: "The body is over its limit",
    415: "The body is of a type this operation does not take",
    416: "The range starts past the end",
    422: "Invalid input: `details` names each problem",
    429: "Too many requests: retry after `Retry-After` seconds",
    503: "A dependency (database, Redis, file storage) is down: retry after `Retry-After` seconds",
}

_INTEGER = {"type": "integer", "minimum": 0}
# Shared header definitions, referenced from the responses.
_HEADER_COMPONENTS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The caller's request id when well formed, otherwise a new one.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
    },
    "WWW-Authenticate": {
        "description": '`Bearer`, with `error="invalid_token"` when a credential was sent.',
        "required": True,
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": _INTEGER,
    },
    "RateLimit-Limit": {
        "description": "Requests allowed in the window of the tightest limit that applies.",
        "schema": _INTEGER,
    },
    "RateLimit-Remaining": {
        "description": "Requests left in that window.",
        "schema": _INTEGER,
    },
    "RateLimit-Reset": {
        "description": "Seconds until that window lets another request in.",
        "schema": _INTEGER,
    },
}
_HEADERS_BY_STATUS = {401: ("WWW-Authenticate",), 429: ("Retry-After",), 503: ("Retry-After",)}
_RATE_LIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")

_SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    BEARER: {
        "type": "http",
        "scheme": "bearer",
        "description": "An access token from the token endpoint, or an API key.",
    },
    API_KEY: {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "An API key."},
}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    if dependant.call is not None:
        yield dependant.call
    for dependency in dependant.dependencies:
        yield from _calls(dependency)


def error_statuses(route: APIRoute) -> set[int]:
    """The error statuses `route` can answer with: declared by what it calls, and what
    every route with parameters, a body or a path id can meet."""
    statuses: set[int] = set()
    for call in _calls(route.dependant):
        statuses |= getattr(call, _ANSWERS, frozenset())
    statuses |= {int(status) for status in route.responses if str(status).isdigit()}
    statuses = {status for status in statuses if status >= 400}
    if get_flat_params(route.dependant) or route.body_field is not None:
        statuses.add(422)
    if route.param_convertors:  # a path id, read by the endpoint or a dependency
        statuses.add(404)
    if route.body_field is not None:
        statuses.add(413)
        if not isinstance(getattr(route.body_field, "field_info", None), Form):
            statuses.add(415)
    return statuses


def security_of(route: APIRoute) -> list[str] | None:
    """The security schemes every credential check of `route` accepts; None: no check."""
    accepted: list[str] | None = None
    for call in _calls(route.dependant):
        schemes: tuple[str, ...] | None = getattr(call, _SECURED_BY, None)
        if schemes is not None:
            accepted = [s for s in (accepted if accepted is not None else schemes) if s in schemes]
    return accepted


def _error_response(status: int, declared: dict[str, Any] | None) -> dict[str, Any]:
    response = dict(declared or {})
    response.setdefault("description", _DESCRIPTIONS.get(status, "Error"))
    content = response.get("content") or {}
    if status == 422 or "application/json" not in content:
        # 422 included: FastAPI puts its own HTTPValidationError there, never sent.
        response["content"] = {"application/json": {"schema": {"$ref": f"{_SCHEMAS}Error"}}}
    return response


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"{_HEADERS}{name}"}


def _complete_operation(route: APIRoute, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    statuses = error_statuses(route)
    if "requestBody" in operation:
        statuses.add(413)
    for status in sorted(statuses):
        responses[str(status)] = _error_response(status, responses.get(str(status)))
        headers = responses[str(status)].setdefault("headers", {})
        for name in _HEADERS_BY_STATUS.get(status, ()):
            headers.setdefault(name, _ref(name))
    rate_limited = any(getattr(call, _RATE_LIMITED, False) for call in _calls(route.dependant))
    for response in responses.values():
        headers = response.setdefault("headers", {})
        headers.setdefault("X-Request-ID", _ref("X-Request-ID"))
        if rate_limited:
            for name in _RATE_LIMIT_HEADERS:
                headers.setdefault(name, _ref(name))
    operation["responses"] = dict(sorted(responses.items()))
    schemes = security_of(route)
    if schemes is None:
        operation.pop("security", None)
    else:
        operation["security"] = [{scheme: []} for scheme in schemes]
    if operation.get("description") == operation.get("summary"):
        operation.pop("description", None)


def _error_components() -> dict[str, Any]:
    schema = Error.model_json_schema(ref_template=_SCHEMAS + "{model}", mode="serialization")
    definitions: dict[str, Any] = schema.pop("$defs", {})
    return {**definitions, "Error": schema}


def complete_openapi(app: FastAPI, document: dict[str, Any]) -> dict[str, Any]:
    """Add error responses, headers and security to every operation of `document`."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    # FastAPI's validation error shapes: Keel answers 422 in its own.
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas.update(_error_components())
    components.setdefault("headers", {}).update(_HEADER_COMPONENTS)
    components.setdefault("securitySchemes", {}).update(_SECURITY_SCHEMES)
    paths: dict[str, dict[str, Any]] = document.get("paths", {})
    for route in app.routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods or ():
            operation = paths.get(route.path_format, {}).get(method.lower())
            if operation is not None:
                _complete_operation(route, operation)
    return document


def install_openapi(app: FastAPI, tags: list[dict[str, Any]]) -> None:
    """Serve the completed document at the app's openapi_url (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                description=app.description,
                routes=app.routes,
                tags=tags,
            )
            app.openapi_schema = complete_openapi(app, document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
