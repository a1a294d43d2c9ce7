"""Small SQL helpers shared by repositories."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

LIKE_ESCAPE = "\\"


def contains_pattern(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, with its own % and _ taken literally."""
    escaped = (
        text.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2)
        .replace("%", LIKE_ESCAPE + "%")
        .replace("_", LIKE_ESCAPE + "_")
    )
    return f"%{escaped}%"


class json_array_contains(FunctionElement[bool]):  # noqa: N801 - reads as SQL
    """`column` (a JSON array) holds `value`: JSONB containment on PostgreSQL, which its
    GIN index answers; json_each on SQLite."""

    type = Boolean()
    inherit_cache = True
    name = "json_array_contains"


@compiles(json_array_contains)
def _json_array_contains_sqlite(element: json_array_contains, compiler: Any, **kw: Any) -> str:
    column, value = list(element.clauses)
    # Both parts are compiled SQL (a column, a bound parameter), never client text.
    array, wanted = compiler.process(column, **kw), compiler.process(value, **kw)
    return f"EXISTS (SELECT 1 FROM json_each({array}) WHERE json_each.value = {wanted})"  # noqa: S608


@compiles(json_array_contains, "postgresql")
def _json_array_contains_postgresql(element: json_array_contains, compiler: Any, **kw: Any) -> str:
    column, value = list(element.clauses)
    return f"{compiler.process(column, **kw)} @> jsonb_build_array({compiler.process(value, **kw)})"
