"""One error shape for every answer that is not a success (API.md, "Errors").

Domain code raises subclasses of `AppError`; the handlers here turn those, Starlette's
HTTP errors, validation errors and unreachable dependencies into
`{"error": {"code", "message", "request_id", "details"}}`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, cast

import asyncpg
import redis.exceptions
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from keel.core.request_context import current_request_id
from keel.core.storage import StorageError

log = structlog.get_logger("keel.errors")

# Seconds a client should wait before retrying when a dependency is down.
RETRY_AFTER_SECONDS = 5


class AppError(Exception):
    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "INTERNAL_ERROR"
    message: ClassVar[str] = "Internal server error"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Sequence[Mapping[str, Any]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.detail_message = message or self.message
        self.details = list(details)
        self.headers = dict(headers or {})
        super().__init__(self.detail_message)


class BadRequest(AppError):
    status_code, code, message = 400, "BAD_REQUEST", "Bad request"


class Unauthorized(AppError):
    status_code, code, message = 401, "UNAUTHORIZED", "Not authenticated"


class Forbidden(AppError):
    status_code, code, message = 403, "FORBIDDEN", "Not allowed"


class NotFound(AppError):
    status_code, code, message = 404, "NOT_FOUND", "Not found"


class Conflict(AppError):
    status_code, code, message = 409, "CONFLICT", "Conflict"


class RequestTimeout(AppError):
    status_code, code, message = 408, "REQUEST_TIMEOUT", "The request body stopped arriving"


class PreconditionFailed(AppError):
    status_code, code, message = 412, "PRECONDITION_FAILED", "Precondition failed"


class PayloadTooLarge(AppError):
    status_code, code, message = 413, "PAYLOAD_TOO_LARGE", "Request body too large"


class UnsupportedMediaType(AppError):
    status_code, code, message = 415, "UNSUPPORTED_MEDIA_TYPE", "Unsupported media type"


class RangeNotSatisfiable(AppError):
    status_code, code, message = 416, "RANGE_NOT_SATISFIABLE", "Range not satisfiable"


class ValidationFailed(AppError):
    status_code, code, message = 422, "VALIDATION_ERROR", "Request validation failed"


class RateLimited(AppError):
    status_code, code, message = 429, "RATE_LIMITED", "Too many requests"


class ServiceUnavailable(AppError):
    status_code, code, message = 503, "SERVICE_UNAVAILABLE", "Service temporarily unavailable"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


# Codes for the statuses Starlette raises on its own (routing, methods).
_CODES_BY_STATUS = {
    cls.status_code: (cls.code, cls.message)
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        RequestTimeout,
        PreconditionFailed,
        PayloadTooLarge,
        UnsupportedMediaType,
        RangeNotSatisfiable,
        ValidationFailed,
        RateLimited,
        ServiceUnavailable,
        AppError,
    )
}
_CODES_BY_STATUS[405] = ("METHOD_NOT_ALLOWED", "Method not allowed")


def error_body(
    code: str, message: str, details: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "request_id": current_request_id(),
            "details": list(details),
        }
    }


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: Sequence[Mapping[str, Any]] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(code, message, details), status_code=status_code, headers=headers
    )


# Starlette types every handler as taking Exception; each is registered for one class.


async def _app_error(_request: Request, exc: Exception) -> Response:
    error = cast("AppError", exc)
    return error_response(
        error.status_code, error.code, error.detail_message, error.details, error.headers
    )


async def _http_error(_request: Request, exc: Exception) -> Response:
    error = cast("StarletteHTTPException", exc)
    code, message = _CODES_BY_STATUS.get(error.status_code, ("ERROR", "Request failed"))
    if error.status_code == 404:
        message = "Not found"
    elif isinstance(error.detail, str) and error.status_code < 500:
        message = error.detail
    return error_response(error.status_code, code, message, headers=error.headers)


def validation_details(errors: Sequence[Any]) -> list[dict[str, Any]]:
    # The input is left out on purpose: it may hold a password.
    return [
        {
            "loc": list(error.get("loc", ())),
            "msg": error.get("msg", ""),
            "type": error.get("type", ""),
        }
        for error in errors
    ]


async def _validation_error(_request: Request, exc: Exception) -> Response:
    errors = cast("RequestValidationError", exc).errors()
    return error_response(
        422, "VALIDATION_ERROR", "Request validation failed", validation_details(errors)
    )


async def _dependency_down(request: Request, exc: Exception) -> Response:
    log.error(
        "dependency_unavailable",
        error_type=type(exc).__name__,
        path=request.url.path,
        exc_info=exc,
    )
    unavailable = ServiceUnavailable()
    return error_response(
        unavailable.status_code,
        unavailable.code,
        unavailable.detail_message,
        headers=unavailable.headers,
    )


# What "a dependency is down" looks like: the database, Redis or the file store
# unreachable, a pool with no free connection in time, a connection dropped mid-request.
DEPENDENCY_DOWN_ERRORS: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    # The request pool's driver, on PostgreSQL (core/db.py): connections lost or
    # refused, the server shutting down or out of connection slots.
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    ConnectionError,
    TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    # File storage: S3 unreachable or refusing, the local folder full or unwritable.
    StorageError,
)


# SQLSTATE classes that say the server cannot serve now, whatever the driver's class:
# 08 connection exceptions, 57P operator intervention (shutting down: 57P01 admin,
# 57P02 crash, 57P03 cannot connect now), 53300 too many connections.
_DOWN_SQLSTATES = ("08", "57P", "53300")


def is_dependency_down(exc: BaseException) -> bool:
    """Whether `exc`, or an error it wraps, says a dependency is unreachable or going
    away. SQLAlchemy wraps asyncpg's errors in its own DBAPIError (its asyncpg adapter
    maps a shutting-down server to the generic `Error`), so the chain is walked."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa_exc.DBAPIError):
            if current.connection_invalidated:
                return True
        elif isinstance(current, DEPENDENCY_DOWN_ERRORS):
            return True
        sqlstate = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_DOWN_SQLSTATES):
            return True
        wrapped = current.orig if isinstance(current, sa_exc.DBAPIError) else None
        current = wrapped or current.__cause__ or current.__context__
    return False


async def _database_error(request: Request, exc: Exception) -> Response:
    """SQLAlchemy's other DBAPIErrors: 503 when the server is going away or cannot be
    reached, otherwise a genuine bug (re-raised: the last-resort handler makes it a 500)."""
    if is_dependency_down(exc):
        return await _dependency_down(request, exc)
    raise exc


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for error_type in DEPENDENCY_DOWN_ERRORS:
        app.add_exception_handler(error_type, _dependency_down)
    # The most specific handler wins: OperationalError and InterfaceError (above) are
    # always 503; any other DBAPIError only when what it wraps says so.
    app.add_exception_handler(sa_exc.DBAPIError, _database_error)
