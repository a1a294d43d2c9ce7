"""What a request may bring in, checked before any endpoint sees it (API.md, Conventions).

- **A JSON body must keep arriving**: one from which nothing arrives for
  `KEEL_HTTP_RECEIVE_TIMEOUT_SECONDS` is 408, as an upload's is.
- **JSON bodies are parsed here**, with orjson, and every way a body can fail to be
  JSON is the same 422 `json_invalid`: bad syntax, bytes that are not UTF-8 (or a
  declared charset that is not), nesting deeper than 1,024 levels, a number too large
  for a double. Starlette's own parser raised other errors for those, which FastAPI
  answered 400.
- **No text may hold the NUL character** (U+0000), in a JSON body or a query
  parameter: PostgreSQL cannot store it in text and refuses the statement, which would
  be a 500 (and a cut connection mid-export). It is a 422 here instead, naming the
  field.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError

from keel.config import Settings
from keel.core.transfers import within_receive_timeout

NUL = "\x00"
_ESCAPED_NUL = b"\\u0000"
_NUL_DETAIL = "Text may not contain the NUL character (U+0000)"
_UTF8 = ("utf-8", "utf8")


def _json_invalid(position: int, problem: str) -> RequestValidationError:
    return RequestValidationError(
        [
            {
                "type": "json_invalid",
                "loc": ("body", position),
                "msg": f"JSON decode error: {problem}",
                "input": {},
            }
        ]
    )


def _nul_found(loc: tuple[str | int, ...]) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "string_nul", "loc": loc, "msg": _NUL_DETAIL, "input": {}}]
    )


def _declared_charset(content_type: str) -> str | None:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


async def read_json_body(request: Request) -> None:
    """Parse the request's JSON body once, for FastAPI to validate.

    The parsed value is left where Starlette's `Request.json()` caches it, so FastAPI
    takes it from there instead of parsing the body again with the standard library.
    """
    settings: Settings = request.app.state.settings
    chunks = within_receive_timeout(request.stream(), settings.http.receive_timeout_seconds)
    body = b"".join([chunk async for chunk in chunks])
    request._body = body  # Starlette's own cache of the body, which FastAPI reads
    if not body:
        return
    charset = _declared_charset(request.headers.get("content-type", ""))
    if charset is not None and charset not in _UTF8:
        raise _json_invalid(0, f"JSON must be UTF-8, not {charset}")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _json_invalid(exc.pos, exc.msg) from None
    if _ESCAPED_NUL in body:
        for loc in _nul_locations(value, ("body",)):
            raise _nul_found(loc)
    request._json = value  # where Starlette caches the parsed body; FastAPI reads it


def _nul_locations(value: Any, loc: tuple[str | int, ...]) -> Iterator[tuple[str | int, ...]]:
    if isinstance(value, str):
        if NUL in value:
            yield loc
    elif isinstance(value, dict):
        for key, item in value.items():
            if NUL in key:
                yield loc
            yield from _nul_locations(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _nul_locations(item, (*loc, index))


def refuse_nul_in_query(request: Request) -> None:
    """422 when a query parameter's name or value holds NUL (sent as `%00`)."""
    for name, value in request.query_params.multi_items():
        if NUL in name or NUL in value:
            raise _nul_found(("query", name.replace(NUL, "")))
