"""Keyset pagination for every collection (API.md, "Lists").

A page is one SELECT ... ORDER BY key, id LIMIT limit + 1 that starts after the last
row of the previous page, named by a signed cursor; so page 1,000 costs what page 1
costs, and rows inserted meanwhile neither repeat nor hide others. The COUNT runs only
when the client asks for the total.
"""

# No `from __future__ import annotations`: the dependency built by `page_params` puts
# per-resource values in its `Annotated` metadata, which FastAPI must see as objects.

import base64
import binascii
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Generic, NamedTuple, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field, WithJsonSchema
from sqlalchemy import ColumnElement, Select, bindparam, func, select, tuple_
from sqlalchemy.orm import QueryableAttribute

from keel.core.db import Database, Row, Unit, is_prepared, prepared
from keel.core.errors import BadRequest, ValidationFailed
from keel.core.openapi import answers

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# Longest cursor accepted: room for a long string sort value, refuses junk early.
MAX_CURSOR_CHARS = 4096

T = TypeVar("T")
RowT = TypeVar("RowT")
SortColumn = QueryableAttribute[Any] | ColumnElement[Any]

_PAGE_KEY = "keel_page_key"
_PAGE_ID = "keel_page_id"
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_MAC_BYTES = hashlib.sha256().digest_size


@dataclass(frozen=True, slots=True)
class SortOrder:
    name: str  # as the client writes it: "-created_at"
    column: SortColumn
    descending: bool
    # Binds cursors to the column (and so the resource) they were made for.
    scope: str


@dataclass(frozen=True, slots=True)
class PageParams:
    limit: int
    cursor: str | None
    sort: SortOrder
    include_total: bool


class Window(NamedTuple, Generic[RowT]):
    """One page of rows as the query returned them, before they become a response."""

    rows: list[RowT]
    next_cursor: str | None
    total: int | None

    def as_page(self) -> dict[str, Any]:
        """The body of a `Page` response, for FastAPI to validate and serialise once."""
        return {"data": self.rows, "next_cursor": self.next_cursor, "total": self.total}


def _is_none(value: object) -> bool:
    return value is None


class Page(BaseModel, Generic[T]):
    data: list[T]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )
    # Absent from the body unless asked for, while null fields of the items stay.
    total: Annotated[int | None, WithJsonSchema({"type": "integer"})] = Field(
        default=None,
        exclude_if=_is_none,
        description="Rows matching the filters; present only with `include_total=true`.",
    )


class CursorCodec:
    """Opaque, tamper-evident cursors: base64url(HMAC-SHA256 || JSON payload)."""

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("the cursor secret must not be empty")
        # A key of its own, so a cursor's MAC can never pass for another signed value.
        self._key = hmac.new(secret, b"keel.pagination.cursor.v1", hashlib.sha256).digest()

    def encode(self, sort: str, value: object, row_id: object, *, scope: str = "") -> str:
        payload = {"s": sort, "v": _pack(value), "i": _pack(row_id)}
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        token = base64.urlsafe_b64encode(self._mac(scope, body) + body)
        return token.rstrip(b"=").decode("ascii")

    def decode(self, cursor: str, sort: str, *, scope: str = "") -> tuple[Any, Any]:
        """The (sort value, id) a cursor carries; BadRequest unless made here for `sort`."""
        raw = _b64decode(cursor)
        mac, body = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        if not body or not hmac.compare_digest(mac, self._mac(scope, body)):
            raise BadRequest("Invalid cursor")
        try:
            payload = json.loads(body)
            made_for, value, row_id = payload["s"], _unpack(payload["v"]), _unpack(payload["i"])
        except (ValueError, TypeError, KeyError) as exc:
            raise BadRequest("Invalid cursor") from exc
        if made_for != sort:
            raise BadRequest("Cursor was made for another sort order")
        return value, row_id

    def _mac(self, scope: str, body: bytes) -> bytes:
        return hmac.new(self._key, scope.encode() + b"\0" + body, hashlib.sha256).digest()


def _b64decode(cursor: str) -> bytes:
    if len(cursor) > MAX_CURSOR_CHARS or not _B64URL.fullmatch(cursor):
        raise BadRequest("Invalid cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError) as exc:
        raise BadRequest("Invalid cursor") from exc
    # Base64 has several spellings of the same bytes (the unused bits of the last
    # character); only the one we write is accepted, so any changed character fails.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != cursor:
        raise BadRequest("Invalid cursor")
    return raw


# Sort values and ids travel tagged with their type, so they come back exactly.
def _pack(value: object) -> list[Any]:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise TypeError("cursor datetimes must be timezone-aware")
        return ["t", value.isoformat()]
    if isinstance(value, uuid.UUID):
        return ["u", value.hex]
    if isinstance(value, int):
        return ["i", int(value)]
    if isinstance(value, str):
        return ["s", str(value)]
    raise TypeError(f"cannot put a {type(value).__name__} in a cursor")


def _unpack(packed: list[Any]) -> Any:
    kind, text = packed
    if kind == "t":
        return datetime.fromisoformat(text)
    if kind == "u":
        return uuid.UUID(hex=text)
    if kind in {"i", "s"}:
        return text
    raise ValueError("unknown cursor value type")


def page_params(
    sorts: Mapping[str, SortColumn], default: str = "-created_at"
) -> Callable[..., Awaitable[PageParams]]:
    """A dependency reading limit, cursor, sort and include_total for one resource.

    `sorts` names the columns a client may sort by (each NOT NULL); every name is
    allowed as is (ascending) and with a leading `-` (descending).
    """
    orders: dict[str, SortOrder] = {}
    for name, column in sorts.items():
        for descending in (False, True):
            key = f"-{name}" if descending else name
            orders[key] = SortOrder(key, column, descending, scope=str(column))
    if default not in orders:
        raise ValueError(f"default sort {default!r} is not among {sorts!r}")
    allowed = list(orders)

    @answers(400)  # a cursor that is not one of ours
    async def dependency(
        limit: Annotated[
            int, Query(ge=1, le=MAX_LIMIT, description="Rows per page.")
        ] = DEFAULT_LIMIT,
        cursor: Annotated[
            str | None, Query(description="`next_cursor` of the previous page.")
        ] = None,
        sort: Annotated[
            str,
            Query(
                description="Field to sort by; a leading `-` sorts descending. "
                "Ties are broken by id in the same direction.",
                json_schema_extra={"enum": allowed},
            ),
        ] = default,
        include_total: Annotated[
            bool, Query(description="Also count the matching rows (`total`).")
        ] = False,
    ) -> PageParams:
        order = orders.get(sort)
        if order is None:
            expected = ", ".join(f"'{name}'" for name in allowed)
            raise ValidationFailed(
                details=[
                    {"loc": ["query", "sort"], "msg": f"Input should be {expected}", "type": "enum"}
                ]
            )
        # An empty `cursor=` is no cursor: the first page, as a client building the
        # query string from a null next_cursor would mean.
        return PageParams(limit, cursor or None, order, include_total)

    return dependency


@dataclass(frozen=True, slots=True)
class _PageStatements:
    first: Select[Any]  # the first page
    after: Select[Any]  # a page after a cursor's (sort value, id)
    count: Select[Any]  # the total


# Page statements derived from prepared list statements, built once per sort order:
# (id of the list statement, sort name) -> (that statement, its page statements).
_DERIVED: dict[tuple[int, str], tuple[Select[Any], _PageStatements]] = {}


def _page_statements(query: Select[Any], sort: SortOrder, id_column: SortColumn) -> _PageStatements:
    cache_key = (id(query), sort.name)
    known = _DERIVED.get(cache_key)
    if known is not None and known[0] is query:
        return known[1]
    column = sort.column
    base = query.order_by(None)
    if sort.descending:
        ordered = base.order_by(column.desc(), id_column.desc())
    else:
        ordered = base.order_by(column.asc(), id_column.asc())
    # The key and id are selected beside the row, so the cursor never depends on how
    # the row names its columns; one row more than the page says whether one follows.
    keyed = ordered.add_columns(column.label(_PAGE_KEY), id_column.label(_PAGE_ID)).limit(
        bindparam("keel_limit")
    )
    # A row-value comparison: one index range scan on (column, id), on SQLite and
    # PostgreSQL alike, the cursor's values bound with the columns' types.
    key = tuple_(column, id_column)
    start = tuple_(
        bindparam("keel_after_key", type_=column.type),
        bindparam("keel_after_id", type_=id_column.type),
    )
    statements = _PageStatements(
        first=keyed,
        after=keyed.where(key < start if sort.descending else key > start),
        # Same filters, no cursor: the total describes the whole list, not what is left.
        count=select(func.count()).select_from(base.subquery()),
    )
    if is_prepared(query):
        for statement in (statements.first, statements.after, statements.count):
            prepared(statement)
        _DERIVED[cache_key] = (query, statements)
    return statements


async def paginate(
    db: Unit,
    query: Select[Any],
    params: PageParams,
    *,
    id_column: SortColumn,
    codec: CursorCodec,
    values: dict[str, Any] | None = None,
) -> Window[Row]:
    """One page of `query` (plain columns, already narrowed to what the caller may see;
    `values` for its bindparams), in `params.sort` order: one SELECT, and one COUNT
    when the total is asked for. A list statement marked `prepared` (one per filter
    combination, values as bindparams) has its page statements built and compiled once."""
    sort = params.sort
    statements = _page_statements(query, sort, id_column)
    bound = {**(values or {}), "keel_limit": params.limit + 1}
    statement = statements.first
    if params.cursor is not None:
        bound["keel_after_key"], bound["keel_after_id"] = codec.decode(
            params.cursor, sort.name, scope=sort.scope
        )
        statement = statements.after
    rows = await db.all(statement, bound)
    next_cursor = None
    if len(rows) > params.limit:
        last = rows[params.limit - 1]
        next_cursor = codec.encode(sort.name, last[_PAGE_KEY], last[_PAGE_ID], scope=sort.scope)
    total = None
    if params.include_total:
        total = await db.value(statements.count, values)
    page_rows = rows[: params.limit]
    for row in page_rows:
        del row[_PAGE_KEY], row[_PAGE_ID]
    return Window(page_rows, next_cursor, total)


async def batches(
    database: Database,
    query: Select[Any],
    sort: SortOrder,
    *,
    id_column: SortColumn,
    size: int,
    values: dict[str, Any] | None = None,
) -> AsyncIterator[list[Row]]:
    """Every row of `query` in `sort` order, `size` at a time, each batch read by a
    unit of work of its own that gives its connection back before the batch is
    yielded: however long the consumer takes (a client reading an export), it holds
    no pooled connection meanwhile. Keyset-ordered like the pages, so memory stays flat
    and each batch costs what the first does; a row inserted meanwhile ahead of the
    position shows up, one behind it does not, and none repeats."""
    statements = _page_statements(query, sort, id_column)
    # One row more than the batch says whether another follows (as a page's does), so
    # that a row count that is a multiple of `size` costs no empty query at the end.
    bound = {**(values or {}), "keel_limit": size + 1}
    statement = statements.first
    while True:
        async with database.transaction(write=False) as db:
            rows = await db.all(statement, bound)
        more = len(rows) > size
        rows = rows[:size]
        if rows:
            last = rows[-1]
            bound["keel_after_key"], bound["keel_after_id"] = last[_PAGE_KEY], last[_PAGE_ID]
            for row in rows:
                del row[_PAGE_KEY], row[_PAGE_ID]
            yield rows
        if not more:
            return
        statement = statements.after
