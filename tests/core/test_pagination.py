"""Keyset pagination (API.md, "Lists"), over HTTP on a scratch table of its own."""

from __future__ import annotations

import random
import string
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import delete, insert

from keel.core.errors import BadRequest
from keel.core.pagination import CursorCodec, page_params
from tests.fixtures.queries import StatementCounter
from tests.support import paging_routes
from tests.support.assertions import assert_error
from tests.support.paging_routes import OtherRow, PagingRow, ScratchBase

pytestmark = pytest.mark.anyio

URL = "/probe/paging/rows"
OTHERS_URL = "/probe/paging/others"
ROW_COUNT = 250
# Microseconds that must survive the cursor and the database.
BASE_TIME = datetime(2026, 3, 1, 12, 0, 0, 654321, tzinfo=UTC)
SORTS = ["created_at", "name", "rank"]
ALL_SORTS = [prefix + name for name in SORTS for prefix in ("", "-")]

# More pages than any walk here needs: a cursor that repeats its page fails, not hangs.
MAX_PAGES = 400

Row = dict[str, Any]


def make_rows(count: int, rng: random.Random, *, start: int = 0) -> list[Row]:
    # Few distinct names and ranks, four rows per timestamp: every sort has many ties,
    # and random (not time-ordered) ids make the tie-break visible.
    names = ["".join(rng.choices(string.ascii_lowercase, k=8)) for _ in range(30)]
    return [
        {
            "id": uuid.UUID(int=rng.getrandbits(128), version=4),
            "created_at": BASE_TIME + timedelta(milliseconds=index // 4),
            "name": rng.choice(names),
            "rank": index % 7,
            "owner": "alice" if index % 3 else "bob",
            "note": None if index % 2 else f"note {index}",
        }
        for index in range(start, start + count)
    ]


def sort_key(sort: str) -> Callable[[Row], tuple[Any, uuid.UUID]]:
    field = sort.removeprefix("-")
    return lambda row: (row[field], row["id"])


def expected_ids(rows: list[Row], sort: str) -> list[uuid.UUID]:
    ordered = sorted(rows, key=sort_key(sort), reverse=sort.startswith("-"))
    return [row["id"] for row in ordered]


def parsed(item: dict[str, Any]) -> Row:
    return {
        **item,
        "id": uuid.UUID(item["id"]),
        "created_at": datetime.fromisoformat(item["created_at"]),
    }


@pytest.fixture
def routed_app(app: FastAPI) -> FastAPI:
    app.include_router(paging_routes.router)
    return app


@pytest.fixture
async def paging(
    routed_app: FastAPI, client: httpx.AsyncClient
) -> AsyncIterator[httpx.AsyncClient]:
    async with routed_app.state.resources.engine.begin() as connection:
        await connection.run_sync(ScratchBase.metadata.drop_all)
        await connection.run_sync(ScratchBase.metadata.create_all)
    yield client
    async with routed_app.state.resources.engine.begin() as connection:
        await connection.run_sync(ScratchBase.metadata.drop_all)


@pytest.fixture
async def rows(app: FastAPI, paging: httpx.AsyncClient) -> list[Row]:
    seeded = make_rows(ROW_COUNT, random.Random(7))
    await insert_rows(app, seeded)
    return seeded


async def insert_rows(app: FastAPI, new_rows: list[Row]) -> None:
    async with app.state.resources.engine.begin() as connection:
        await connection.execute(insert(PagingRow), new_rows)


async def get_page(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get(URL, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def walk(
    client: httpx.AsyncClient, sort: str, limit: int, **params: Any
) -> tuple[list[Row], list[dict[str, Any]]]:
    """Every page from the first to the one without a next cursor."""
    items: list[Row] = []
    pages: list[dict[str, Any]] = []
    cursor = None
    while len(pages) <= MAX_PAGES:
        query = {"sort": sort, "limit": limit, **params}
        if cursor is not None:
            query["cursor"] = cursor
        page = await get_page(client, **query)
        pages.append(page)
        items.extend(parsed(item) for item in page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items, pages
    pytest.fail("paging never ended: a cursor repeated its page")


@pytest.mark.parametrize("sort", ALL_SORTS)
async def test_every_sort_returns_each_row_once_in_order(
    paging: httpx.AsyncClient, rows: list[Row], sort: str
) -> None:
    items, pages = await walk(paging, sort, limit=17)
    assert [item["id"] for item in items] == expected_ids(rows, sort)
    assert all(len(page["data"]) == 17 for page in pages[:-1])
    assert {item["created_at"] for item in items} == {row["created_at"] for row in rows}


async def test_default_sort_is_newest_first(paging: httpx.AsyncClient, rows: list[Row]) -> None:
    items, _ = await walk(paging, "-created_at", limit=100)
    page = await get_page(paging)
    assert len(page["data"]) == 20
    assert [parsed(item)["id"] for item in page["data"]] == [i["id"] for i in items[:20]]


async def test_last_full_page_has_no_next_cursor(
    paging: httpx.AsyncClient, rows: list[Row]
) -> None:
    _, pages = await walk(paging, "rank", limit=25)
    assert len(pages) == ROW_COUNT // 25
    assert all(page["next_cursor"] for page in pages[:-1])
    assert pages[-1]["next_cursor"] is None
    assert len(pages[-1]["data"]) == 25


async def test_empty_list(paging: httpx.AsyncClient) -> None:
    body = await get_page(paging, include_total="true")
    assert body == {"data": [], "next_cursor": None, "total": 0}


@pytest.mark.parametrize("sort", ["-created_at", "created_at", "name", "-rank"])
async def test_rows_inserted_between_pages_never_repeat_or_hide_others(
    app: FastAPI, paging: httpx.AsyncClient, rows: list[Row], sort: str
) -> None:
    rng = random.Random(11)
    seen: list[Row] = []
    cursor = None
    batch = 0
    while batch <= MAX_PAGES:
        params: dict[str, Any] = {"sort": sort, "limit": 13}
        if cursor is not None:
            params["cursor"] = cursor
        page = await get_page(paging, **params)
        seen.extend(parsed(item) for item in page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        # New rows land before, among and after the rows still to come.
        batch += 1
        await insert_rows(app, make_rows(6, rng, start=ROW_COUNT + batch * 6 - 200))
    else:
        pytest.fail("paging never ended: a cursor repeated its page")

    ids = [item["id"] for item in seen]
    assert len(ids) == len(set(ids))
    assert {row["id"] for row in rows} <= set(ids)
    keys = [sort_key(sort)(item) for item in seen]
    assert keys == sorted(keys, reverse=sort.startswith("-"))


async def test_row_behind_the_cursor_deleted_meanwhile(
    app: FastAPI, paging: httpx.AsyncClient, rows: list[Row]
) -> None:
    first = await get_page(paging, sort="name", limit=10)
    last_id = uuid.UUID(first["data"][-1]["id"])
    async with app.state.resources.engine.begin() as connection:
        await connection.execute(delete(PagingRow).where(PagingRow.id == last_id))
    second = await get_page(paging, sort="name", limit=10, cursor=first["next_cursor"])
    assert [uuid.UUID(item["id"]) for item in second["data"]] == expected_ids(rows, "name")[10:20]


async def test_total_only_when_asked_and_with_the_filters(
    paging: httpx.AsyncClient, rows: list[Row]
) -> None:
    bobs = sum(1 for row in rows if row["owner"] == "bob")
    plain = await get_page(paging, owner="bob", limit=30)
    assert "total" not in plain
    assert plain["data"][0]["note"] is None or plain["data"][1]["note"] is None
    assert all("note" in item for item in plain["data"])

    items, pages = await walk(paging, "-created_at", 30, owner="bob", include_total="true")
    assert len(items) == bobs
    assert {item["owner"] for item in items} == {"bob"}
    # The total counts the whole filtered list on every page, not what is left.
    assert [page["total"] for page in pages] == [bobs] * len(pages)

    unfiltered = await get_page(paging, include_total="true", limit=1)
    assert unfiltered["total"] == ROW_COUNT
    assert "total" not in await get_page(paging, include_total="false")


async def test_a_page_costs_one_select_and_one_count_at_most(
    paging: httpx.AsyncClient, rows: list[Row], count_queries: StatementCounter
) -> None:
    first = await get_page(paging, limit=100, include_total="true")
    for params, statements in [
        ({"limit": 100, "include_total": "true"}, 2),
        ({"limit": 100, "include_total": "true", "cursor": first["next_cursor"]}, 2),
        ({"limit": 1}, 1),
        ({"limit": 100, "cursor": first["next_cursor"], "owner": "alice"}, 1),
    ]:
        count_queries.reset()
        await get_page(paging, **params)
        assert count_queries.count == statements, count_queries.statements


async def cursor_for(client: httpx.AsyncClient, sort: str) -> str:
    cursor = (await get_page(client, sort=sort, limit=5))["next_cursor"]
    assert isinstance(cursor, str)
    return cursor


def flipped(cursor: str, position: int) -> str:
    replacement = "A" if cursor[position] != "A" else "B"
    return cursor[:position] + replacement + cursor[position + 1 :]


async def test_empty_cursor_is_no_cursor(paging: httpx.AsyncClient, rows: list[Row]) -> None:
    # Issue 12: `cursor=` (a client writing out a null next_cursor) is the first page.
    first = await paging.get(URL, params={"sort": "-name", "limit": 2})
    empty = await paging.get(URL, params={"sort": "-name", "limit": 2, "cursor": ""})
    assert empty.status_code == 200
    assert empty.json() == first.json()


async def test_tampered_cursor_is_400(paging: httpx.AsyncClient, rows: list[Row]) -> None:
    cursor = await cursor_for(paging, "-name")
    assert all(char.isalnum() or char in "-_" for char in cursor)
    other_sort = await cursor_for(paging, "name")
    other_secret = CursorCodec(b"another server").encode(
        "-name", "abc", uuid.uuid4(), scope=str(PagingRow.name)
    )
    bad = [
        *(flipped(cursor, position) for position in (0, 5, len(cursor) // 2, len(cursor) - 1)),
        cursor[:-1],
        cursor[:-4],
        cursor[:20],
        cursor + "A",
        other_sort,
        other_secret,
        "garbage",
        "!!!!",
        "A" * 5000,
    ]
    for value in bad:
        response = await paging.get(URL, params={"sort": "-name", "cursor": value})
        assert_error(response, 400, "BAD_REQUEST")
    # The same cursor with another sort of the same column is refused too.
    response = await paging.get(URL, params={"sort": "name", "cursor": cursor})
    assert_error(response, 400, "BAD_REQUEST")


async def test_cursor_of_another_collection_is_400(
    app: FastAPI, paging: httpx.AsyncClient, rows: list[Row]
) -> None:
    # Same secret, same sort name and value types: only the collection differs.
    cursor = await cursor_for(paging, "-created_at")
    others = [{"id": uuid.uuid4(), "created_at": row["created_at"]} for row in rows[:10]]
    async with app.state.resources.engine.begin() as connection:
        await connection.execute(insert(OtherRow), others)
    assert len((await paging.get(OTHERS_URL, params={"limit": 5})).json()["data"]) == 5
    response = await paging.get(OTHERS_URL, params={"sort": "-created_at", "cursor": cursor})
    assert_error(response, 400, "BAD_REQUEST")


@pytest.mark.parametrize("limit", ["0", "101", "-1", "ten"])
async def test_limit_out_of_range_is_422(paging: httpx.AsyncClient, limit: str) -> None:
    error = assert_error(await paging.get(URL, params={"limit": limit}), 422, "VALIDATION_ERROR")
    assert error["details"][0]["loc"] == ["query", "limit"]


@pytest.mark.parametrize("limit", ["1", "100"])
async def test_limit_bounds_are_allowed(
    paging: httpx.AsyncClient, rows: list[Row], limit: str
) -> None:
    assert len((await get_page(paging, limit=limit))["data"]) == int(limit)


@pytest.mark.parametrize("sort", ["owner", "-note", "--rank", "rank-", "id", ""])
async def test_unknown_sort_is_422(paging: httpx.AsyncClient, sort: str) -> None:
    error = assert_error(await paging.get(URL, params={"sort": sort}), 422, "VALIDATION_ERROR")
    [detail] = error["details"]
    assert detail["loc"] == ["query", "sort"]
    assert detail["type"] == "enum"
    assert "-created_at" in detail["msg"]


def test_openapi_documents_the_parameters_and_the_page(routed_app: FastAPI) -> None:
    schema = routed_app.openapi()
    parameters = {p["name"]: p for p in schema["paths"][URL]["get"]["parameters"]}
    assert set(parameters) >= {"limit", "cursor", "sort", "include_total", "owner"}
    assert parameters["limit"]["schema"]["minimum"] == 1
    assert parameters["limit"]["schema"]["maximum"] == 100
    assert parameters["limit"]["schema"]["default"] == 20
    assert set(parameters["sort"]["schema"]["enum"]) == set(ALL_SORTS)
    assert parameters["sort"]["schema"]["default"] == "-created_at"
    page = schema["components"]["schemas"]["Page_RowRead_"]
    assert set(page["properties"]) == {"data", "next_cursor", "total"}
    assert page["required"] == ["data", "next_cursor"]
    assert page["properties"]["total"]["type"] == "integer"


# The codec on its own.

CODEC = CursorCodec(b"unit-test-secret")
OFFSETS = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
)
VALUES = st.one_of(
    st.datetimes(timezones=OFFSETS), st.uuids(), st.integers(), st.text(max_size=300)
)


@given(value=VALUES, row_id=st.one_of(st.uuids(), st.integers()), sort=st.text(max_size=30))
def test_codec_round_trips_values_exactly(value: Any, row_id: Any, sort: str) -> None:
    decoded_value, decoded_id = CODEC.decode(CODEC.encode(sort, value, row_id), sort)
    assert (decoded_value, decoded_id) == (value, row_id)
    assert type(decoded_value) is type(value)
    assert type(decoded_id) is type(row_id)
    if isinstance(value, datetime):
        assert decoded_value.utcoffset() == value.utcoffset()
        assert decoded_value.microsecond == value.microsecond


def test_codec_refuses_every_changed_character() -> None:
    cursor = CODEC.encode("-created_at", BASE_TIME, uuid.uuid4(), scope="items")
    assert CODEC.decode(cursor, "-created_at", scope="items")[0] == BASE_TIME
    for position in range(len(cursor)):
        for replacement in {"A", "g", "_", "-", "0"} - {cursor[position]}:
            changed = cursor[:position] + replacement + cursor[position + 1 :]
            with pytest.raises(BadRequest):
                CODEC.decode(changed, "-created_at", scope="items")


@pytest.mark.parametrize("sort", ["s", "so", "sor"])
def test_codec_refuses_other_spellings_of_the_same_bytes(sort: str) -> None:
    # Some lengths leave unused bits in the last base64 character; setting them would
    # decode to the same bytes, and must be refused like any other change.
    cursor = CODEC.encode(sort, 1, 2)
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    last = alphabet.index(cursor[-1])
    for bit in range(6):
        changed = cursor[:-1] + alphabet[last ^ (1 << bit)]
        with pytest.raises(BadRequest):
            CODEC.decode(changed, sort)


def test_codec_refuses_another_sort_scope_or_secret() -> None:
    cursor = CODEC.encode("-created_at", BASE_TIME, 42, scope="users.created_at")
    with pytest.raises(BadRequest):
        CODEC.decode(cursor, "created_at", scope="users.created_at")
    with pytest.raises(BadRequest):
        CODEC.decode(cursor, "-created_at", scope="items.created_at")
    with pytest.raises(BadRequest):
        CursorCodec(b"other").decode(cursor, "-created_at", scope="users.created_at")


def test_codec_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(TypeError):
        CODEC.encode("x", datetime(2026, 1, 1), 1)  # noqa: DTZ001 - naive on purpose
    with pytest.raises(TypeError):
        CODEC.encode("x", 1.5, 1)
    with pytest.raises(ValueError, match="secret"):
        CursorCodec(b"")


def test_default_sort_must_be_allowed() -> None:
    with pytest.raises(ValueError, match="default sort"):
        page_params({"name": PagingRow.name})
