"""GET /items/export: the same items as the list, streamed, parsed back exactly."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel.models import Role
from tests.factories.items import make_items
from tests.factories.users import SignedIn, signed_in
from tests.items.test_items import ITEM_FIELD_ORDER, ITEMS, create, detail_locs
from tests.items.test_listing import sort_key, walk
from tests.support.assertions import assert_error

pytestmark = pytest.mark.anyio

EXPORT = f"{ITEMS}/export"
COLUMNS = ITEM_FIELD_ORDER


async def export(client: httpx.AsyncClient, who: SignedIn, **params: Any) -> httpx.Response:
    response = await client.get(EXPORT, params=params, headers=who.headers)
    assert response.status_code == 200, response.text
    return response


def from_ndjson(text: str) -> list[dict[str, Any]]:
    assert text.endswith("\n") or text == ""
    return [json.loads(line) for line in text.splitlines()]


def from_csv(text: str) -> list[dict[str, Any]]:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == COLUMNS
    items = []
    for row in rows[1:]:
        item: dict[str, Any] = dict(zip(COLUMNS, row, strict=True))
        item["tags"] = item["tags"].split(" ") if item["tags"] else []
        item["version"] = int(item["version"])
        items.append(item)
    return items


async def test_ten_thousand_items_in_both_formats_parse_back_exactly(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    await make_items(app, me.user.id, 10_000)
    expected = sorted(await walk(client, me, limit=100), key=sort_key("created_at"))
    assert len(expected) == 10_000

    ndjson = await export(client, me)
    assert ndjson.headers["content-type"] == "application/x-ndjson"
    assert ndjson.headers["content-disposition"] == 'attachment; filename="items.ndjson"'
    assert from_ndjson(ndjson.text) == expected  # same fields, same values, oldest first

    table = await export(client, me, format="csv")
    assert table.headers["content-type"] == "text/csv; charset=utf-8"
    assert from_csv(table.text) == expected


async def test_export_applies_filters_and_visibility(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    ann = await signed_in(app, client)
    bob = await signed_in(app, client)
    await create(client, ann, title="ann red", tags=["red"])
    await create(client, ann, title="ann blue", tags=["blue"], status="active")
    await create(client, bob, title="bob red", tags=["red"])

    def titles(response: httpx.Response) -> list[str]:
        return [item["title"] for item in from_ndjson(response.text)]

    assert titles(await export(client, ann)) == ["ann red", "ann blue"]
    assert titles(await export(client, ann, tag="red")) == ["ann red"]
    assert titles(await export(client, ann, status="active")) == ["ann blue"]
    assert titles(await export(client, ann, q="BLUE")) == ["ann blue"]
    moderator = await signed_in(app, client, Role.MODERATOR)
    assert titles(await export(client, moderator, tag="red")) == ["ann red", "bob red"]
    assert titles(await export(client, moderator, owner_id=str(bob.user.id))) == ["bob red"]
    forbidden = await client.get(EXPORT, params={"owner_id": str(bob.user.id)}, headers=ann.headers)
    assert_error(forbidden, 403, "FORBIDDEN")


async def test_an_empty_export(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    assert (await export(client, me)).content == b""
    assert from_csv((await export(client, me, format="csv")).text) == []


async def test_csv_cells_never_start_a_formula(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    hostile = ["=1+1", "+SUM(A1)", "-2", "@cmd", "\tx", "\rx"]
    for title in hostile:
        await create(client, me, title=title, description=title, tags=["-lead"])
    await create(client, me, title='quote " and, comma', description="line\nbreak")
    rows = from_csv((await export(client, me, format="csv")).text)
    assert [row["title"] for row in rows] == [
        *("'" + title for title in hostile),
        'quote " and, comma',
    ]
    assert [row["description"] for row in rows][:6] == ["'" + title for title in hostile]
    assert rows[-1]["description"] == "line\nbreak"
    assert rows[0]["tags"] == ["'-lead"]


async def test_export_errors(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    assert ["query", "format"] in detail_locs(
        await client.get(EXPORT, params={"format": "xml"}, headers=me.headers)
    )
    assert ["query", "tag"] in detail_locs(
        await client.get(EXPORT, params={"tag": "NO"}, headers=me.headers)
    )
    assert_error(await client.get(EXPORT), 401, "UNAUTHORIZED")
