"""GET /items: visibility, filters, sorts, keyset paging, and its statement budget."""

from __future__ import annotations

import asyncio
import base64
import math
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel.items.export import BATCH_ROWS
from keel.models import Role
from tests.factories.items import make_item, make_items
from tests.factories.users import SignedIn, signed_in
from tests.fixtures.queries import StatementCounter
from tests.items.test_items import ITEMS, create, detail_locs, url
from tests.support.assertions import assert_error

pytestmark = pytest.mark.anyio

SORTS = ["created_at", "-created_at", "updated_at", "-updated_at", "title", "-title"]


async def page(client: httpx.AsyncClient, who: SignedIn, **params: Any) -> httpx.Response:
    return await client.get(ITEMS, params=params, headers=who.headers)


async def walk(client: httpx.AsyncClient, who: SignedIn, **params: Any) -> list[dict[str, Any]]:
    """Every page in turn, following next_cursor; all the rows, in order."""
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await page(client, who, **query)
        assert response.status_code == 200, response.text
        body = response.json()
        rows.extend(body["data"])
        cursor = body["next_cursor"]
        if cursor is None:
            return rows


def sort_key(field: str) -> Any:
    """What the server orders by: the field's value (timestamps as instants), then id."""
    name = field.lstrip("-")
    if name.endswith("_at"):
        return lambda row: (datetime.fromisoformat(row[name]), row["id"])
    return lambda row: (row[name], row["id"])


# Visibility.


async def test_a_user_lists_their_own_items_and_staff_list_all(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    ann = await signed_in(app, client)
    bob = await signed_in(app, client)
    await create(client, ann, title="ann's")
    await create(client, bob, title="bob's")
    mine = (await page(client, ann)).json()["data"]
    assert [item["title"] for item in mine] == ["ann's"]
    for role in (Role.MODERATOR, Role.ADMIN):
        staff = await signed_in(app, client, role)
        titles = {item["title"] for item in (await page(client, staff)).json()["data"]}
        assert titles == {"ann's", "bob's"}


async def test_owner_filter(app: FastAPI, client: httpx.AsyncClient) -> None:
    ann = await signed_in(app, client)
    bob = await signed_in(app, client)
    moderator = await signed_in(app, client, Role.MODERATOR)
    await create(client, ann, title="ann's")
    await create(client, bob, title="bob's")
    bobs = (await page(client, moderator, owner_id=str(bob.user.id))).json()["data"]
    assert [item["title"] for item in bobs] == ["bob's"]
    own = (await page(client, ann, owner_id=str(ann.user.id))).json()["data"]
    assert [item["title"] for item in own] == ["ann's"]
    assert_error(await page(client, ann, owner_id=str(bob.user.id)), 403, "FORBIDDEN")
    assert_error(await page(client, ann, owner_id=str(uuid.uuid4())), 403, "FORBIDDEN")
    assert ["query", "owner_id"] in detail_locs(await page(client, ann, owner_id="me"))


async def test_listing_needs_a_sign_in(client: httpx.AsyncClient) -> None:
    assert_error(await client.get(ITEMS), 401, "UNAUTHORIZED")


# Filters.


async def test_filters_combine(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    await create(client, me, title="Alpha plan", status="active", tags=["red", "blue"])
    await create(client, me, title="beta PLAN", status="draft", tags=["blue"])
    await create(client, me, title="gamma", status="active", tags=["red"])
    await create(client, me, title="100% done_", status="archived", tags=["red-2"])

    async def titles(**params: Any) -> set[str]:
        response = await page(client, me, **params)
        assert response.status_code == 200, response.text
        return {item["title"] for item in response.json()["data"]}

    assert await titles(status="active") == {"Alpha plan", "gamma"}
    assert await titles(tag="blue") == {"Alpha plan", "beta PLAN"}
    assert await titles(tag="red") == {"Alpha plan", "gamma"}  # a tag, not a prefix
    assert await titles(q="plan") == {"Alpha plan", "beta PLAN"}  # any case
    assert await titles(q="%") == {"100% done_"}  # LIKE wildcards taken literally
    assert await titles(q="_") == {"100% done_"}
    assert await titles(status="active", tag="blue", q="ALPHA") == {"Alpha plan"}
    assert await titles(tag="none") == set()


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"status": "done"}, ["query", "status"]),
        ({"tag": "Not-A-Tag"}, ["query", "tag"]),
        ({"tag": "x" * 33}, ["query", "tag"]),
        ({"q": ""}, ["query", "q"]),
        ({"q": "x" * 201}, ["query", "q"]),
        ({"sort": "owner_id"}, ["query", "sort"]),
        ({"sort": "--title"}, ["query", "sort"]),
        ({"limit": 0}, ["query", "limit"]),
        ({"limit": 101}, ["query", "limit"]),
        ({"limit": "ten"}, ["query", "limit"]),
    ],
)
async def test_bad_list_parameters_are_422(
    app: FastAPI, client: httpx.AsyncClient, params: dict[str, Any], loc: list[str]
) -> None:
    me = await signed_in(app, client)
    assert loc in detail_locs(await page(client, me, **params))


# Paging.


async def test_paging_returns_every_item_once_in_every_sort(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    rows = await make_items(app, me.user.id, 1000)
    expected_ids = {str(row["id"]) for row in rows}
    for sort in SORTS:
        seen = await walk(client, me, sort=sort, limit=37)
        ids = [row["id"] for row in seen]
        assert len(ids) == 1000, sort
        assert set(ids) == expected_ids, sort
        # In the sort's order, ties broken by id in the same direction.
        assert seen == sorted(seen, key=sort_key(sort), reverse=sort.startswith("-")), sort


async def test_paging_while_items_are_inserted(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    rows = await make_items(app, me.user.id, 1000)
    before = {str(row["id"]) for row in rows}
    for sort in ("-created_at", "title"):
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"sort": sort, "limit": 50}
            if cursor:
                params["cursor"] = cursor
            body = (await page(client, me, **params)).json()
            seen.extend(row["id"] for row in body["data"])
            cursor = body["next_cursor"]
            # Someone adds items between our pages (at the front and the back).
            await asyncio.gather(*(create(client, me, title=f"{t} new") for t in ("0", "zz")))
            if cursor is None:
                break
        assert len(seen) == len(set(seen)), sort  # nothing twice
        assert before <= set(seen), sort  # nothing that was there is missed


async def test_include_total_counts_the_filtered_list(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    await make_items(app, me.user.id, 30)  # statuses cycle: 10 of each
    body = (await page(client, me, limit=5, include_total="true", status="active")).json()
    assert body["total"] == 10
    assert len(body["data"]) == 5
    following = await page(
        client, me, limit=5, include_total="true", status="active", cursor=body["next_cursor"]
    )
    assert following.json()["total"] == 10  # the whole list, not what is left
    assert "total" not in (await page(client, me, limit=5)).json()


async def test_a_tampered_cursor_is_400(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    await make_items(app, me.user.id, 5)
    cursor = (await page(client, me, limit=2)).json()["next_cursor"]
    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    raw[-3] ^= 1
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    for bad in (tampered, cursor[:-2], "not a cursor", cursor + "A"):
        assert_error(await page(client, me, limit=2, cursor=bad), 400, "BAD_REQUEST")
    # A cursor made for one sort is refused by another.
    assert_error(await page(client, me, limit=2, sort="title", cursor=cursor), 400, "BAD_REQUEST")
    # Nor does a users cursor page items.
    admin = await signed_in(app, client, Role.ADMIN)
    users_cursor = (
        await client.get("/api/v1/users", params={"limit": 1}, headers=admin.headers)
    ).json()["next_cursor"]
    assert_error(await page(client, admin, cursor=users_cursor), 400, "BAD_REQUEST")


# Statement budgets.


async def test_every_endpoint_runs_a_fixed_number_of_statements(
    app: FastAPI, client: httpx.AsyncClient, count_queries: StatementCounter
) -> None:
    me = await signed_in(app, client)
    await make_items(app, me.user.id, 120)

    async def cost(method: str, path: str, **kwargs: Any) -> int:
        count_queries.reset()
        response = await client.request(method, path, headers=me.headers, **kwargs)
        assert response.status_code < 400, response.text
        return count_queries.count

    page_costs = {await cost("GET", ITEMS, params={"limit": n}) for n in (1, 20, 100)}
    assert page_costs == {1}, count_queries.statements  # the access token needs no query
    assert await cost("GET", ITEMS, params={"limit": 100, "include_total": "true"}) == 2
    first = (await page(client, me, limit=10, tag="t1", q="item")).json()
    assert first["next_cursor"]
    deep = await cost(
        "GET",
        ITEMS,
        params={
            "limit": 50,
            "tag": "t1",
            "q": "item",
            "include_total": "true",
            "cursor": first["next_cursor"],
        },
    )
    assert deep == 2  # the page and its count: within the budget of 3

    item = await make_item(app, me.user.id)
    assert await cost("GET", url(item.id)) == 1
    assert await cost("PATCH", url(item.id), json={"title": "x"}) == 1
    assert await cost("PUT", url(item.id), json={"title": "y"}) == 1
    assert await cost("DELETE", url(item.id)) == 1
    assert await cost("POST", ITEMS, json={"title": "new"}) == 1
    # With a key: its claim (one INSERT), the item, and completing the claim.
    count_queries.reset()
    response = await client.post(
        ITEMS, json={"title": "keyed"}, headers={**me.headers, "Idempotency-Key": "budget"}
    )
    assert response.status_code == 201
    assert count_queries.count == 3, count_queries.statements
    # The export reads its rows in keyset batches, one short SELECT per BATCH_ROWS rows
    # (so that no connection is held while the client reads): exactly that many.
    exported = await client.get(f"{ITEMS}/export", headers=me.headers)
    rows = len(exported.text.splitlines())
    assert rows > BATCH_ROWS  # more than one batch: the count below is not trivially 1
    assert await cost("GET", f"{ITEMS}/export") == math.ceil(rows / BATCH_ROWS)
