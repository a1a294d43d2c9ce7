"""Items, one request at a time: every row of API.md's Items table and its errors."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel.models import Role
from tests.factories.items import make_item
from tests.factories.users import SignedIn, signed_in
from tests.support.assertions import assert_error
from tests.users.test_me import create_api_key

pytestmark = pytest.mark.anyio

ITEMS = "/api/v1/items"
# API.md's Item fields, in its order (the export's columns).
ITEM_FIELD_ORDER = [
    "id",
    "owner_id",
    "title",
    "description",
    "status",
    "tags",
    "version",
    "created_at",
    "updated_at",
]
ITEM_FIELDS = set(ITEM_FIELD_ORDER)


def url(item_id: object) -> str:
    return f"{ITEMS}/{item_id}"


async def create(client: httpx.AsyncClient, who: SignedIn, **body: Any) -> dict[str, Any]:
    response = await client.post(ITEMS, json={"title": "A title", **body}, headers=who.headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


def detail_locs(response: httpx.Response) -> list[list[Any]]:
    return [detail["loc"] for detail in assert_error(response, 422, "VALIDATION_ERROR")["details"]]


# Creating.


async def test_create_returns_the_item_with_location_and_etag(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    response = await client.post(
        ITEMS,
        json={"title": "Write docs", "description": "all of them", "tags": ["docs", "q4"]},
        headers=me.headers,
    )
    assert response.status_code == 201, response.text
    item = response.json()
    assert set(item) == ITEM_FIELDS
    assert uuid.UUID(item["id"]).version == 7
    assert item["owner_id"] == str(me.user.id)
    assert item["title"] == "Write docs"
    assert item["description"] == "all of them"
    assert item["status"] == "draft"
    assert item["tags"] == ["docs", "q4"]
    assert item["version"] == 1
    created = datetime.fromisoformat(item["created_at"])
    assert created.utcoffset() == timedelta(0)
    assert response.headers["location"] == url(item["id"])
    assert response.headers["etag"] == '"1"'
    fetched = await client.get(response.headers["location"], headers=me.headers)
    assert fetched.json() == item


async def test_create_fills_the_defaults_and_drops_repeated_tags(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    item = await create(client, me)
    assert (item["description"], item["status"], item["tags"]) == ("", "draft", [])
    item = await create(client, me, tags=["b", "a", "b"], status="active")
    assert item["tags"] == ["b", "a"]
    assert item["status"] == "active"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, ["body", "title"]),
        ({"title": ""}, ["body", "title"]),
        ({"title": "x" * 201}, ["body", "title"]),
        ({"title": "ok", "description": "x" * 10_001}, ["body", "description"]),
        ({"title": "ok", "status": "done"}, ["body", "status"]),
        ({"title": "ok", "tags": [f"t{n}" for n in range(11)]}, ["body", "tags"]),
        ({"title": "ok", "tags": ["Upper"]}, ["body", "tags", 0]),
        ({"title": "ok", "tags": ["x" * 33]}, ["body", "tags", 0]),
        ({"title": "ok", "tags": ["with space"]}, ["body", "tags", 0]),
        ({"title": "ok", "tags": "a"}, ["body", "tags"]),
        ({"title": "ok", "owner_id": str(uuid.uuid4())}, ["body", "owner_id"]),
        ({"title": "ok", "version": 7}, ["body", "version"]),
    ],
)
async def test_create_validates_the_body(
    app: FastAPI, client: httpx.AsyncClient, body: dict[str, Any], loc: list[Any]
) -> None:
    me = await signed_in(app, client)
    response = await client.post(ITEMS, json=body, headers=me.headers)
    assert loc in detail_locs(response)
    listed = await client.get(ITEMS, headers=me.headers)
    assert listed.json()["data"] == []


async def test_limits_are_inclusive(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    item = await create(
        client,
        me,
        title="x" * 200,
        description="y" * 10_000,
        tags=[f"{'z' * 30}{n}" for n in range(10)],
    )
    assert len(item["title"]) == 200
    assert len(item["tags"]) == 10


async def test_create_needs_a_sign_in(client: httpx.AsyncClient) -> None:
    response = await client.post(ITEMS, json={"title": "x"})
    assert_error(response, 401, "UNAUTHORIZED")


async def test_create_takes_json_only(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    response = await client.post(
        ITEMS,
        content=b"title=x",
        headers={**me.headers, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")


async def test_an_oversized_body_is_413(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    response = await client.post(
        ITEMS, json={"title": "x", "description": "y" * 1_100_000}, headers=me.headers
    )
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


async def test_an_api_key_works_for_its_owner(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    key = (await create_api_key(client, me))["key"]
    headers = {"Authorization": f"Bearer {key}"}
    response = await client.post(ITEMS, json={"title": "by key"}, headers=headers)
    assert response.status_code == 201, response.text
    assert response.json()["owner_id"] == str(me.user.id)
    listed = await client.get(ITEMS, headers={"X-API-Key": key})
    assert [item["title"] for item in listed.json()["data"]] == ["by key"]


# Reading one.


async def test_read_sends_the_etag_and_honours_if_none_match(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    item = await create(client, me)
    response = await client.get(url(item["id"]), headers=me.headers)
    assert response.status_code == 200
    assert response.headers["etag"] == '"1"'
    assert response.json() == item

    for held in ('"1"', 'W/"1"', '"7", "1"', "*"):
        cached = await client.get(url(item["id"]), headers={**me.headers, "If-None-Match": held})
        assert cached.status_code == 304, held
        assert cached.content == b""
        assert cached.headers["etag"] == '"1"'
    for stale in ('"2"', '"01"', "garbage"):
        fresh = await client.get(url(item["id"]), headers={**me.headers, "If-None-Match": stale})
        assert fresh.status_code == 200, stale
        assert fresh.json() == item


async def test_read_errors(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    assert_error(await client.get(url(uuid.uuid4()), headers=me.headers), 404, "NOT_FOUND")
    response = await client.get(url("not-a-uuid"), headers=me.headers)
    assert ["path", "item_id"] in detail_locs(response)
    item = await create(client, me)
    assert_error(await client.get(url(item["id"])), 401, "UNAUTHORIZED")


# Who may read and change what.


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("GET", None),
        ("PUT", {"title": "mine now"}),
        ("PATCH", {"title": "mine now"}),
        ("DELETE", None),
    ],
)
async def test_someone_elses_item_is_404_on_every_method(
    app: FastAPI, client: httpx.AsyncClient, method: str, body: dict[str, Any] | None
) -> None:
    owner = await signed_in(app, client)
    other = await signed_in(app, client)
    item = await create(client, owner, title="private")
    for headers in (other.headers, {**other.headers, "If-Match": '"1"'}):
        response = await client.request(method, url(item["id"]), json=body, headers=headers)
        error = assert_error(response, 404, "NOT_FOUND")
        assert error["message"] == "Item not found"
    # The same as an item that does not exist: nothing tells them apart.
    missing = await client.request(method, url(uuid.uuid4()), json=body, headers=other.headers)
    assert missing.json()["error"]["message"] == "Item not found"
    after = await client.get(url(item["id"]), headers=owner.headers)
    assert after.json() == item


async def test_a_moderator_reads_every_item_but_changes_only_their_own(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    owner = await signed_in(app, client)
    moderator = await signed_in(app, client, Role.MODERATOR)
    item = await create(client, owner)
    assert (await client.get(url(item["id"]), headers=moderator.headers)).json() == item
    for method, body in (("PUT", {"title": "x"}), ("PATCH", {"title": "x"}), ("DELETE", None)):
        response = await client.request(
            method, url(item["id"]), json=body, headers=moderator.headers
        )
        assert_error(response, 403, "FORBIDDEN")
        # A stale If-Match does not change the answer: the permission comes first.
        response = await client.request(
            method, url(item["id"]), json=body, headers={**moderator.headers, "If-Match": '"9"'}
        )
        assert_error(response, 403, "FORBIDDEN")
    assert (await client.get(url(item["id"]), headers=owner.headers)).json() == item

    own = await create(client, moderator)
    patched = await client.patch(url(own["id"]), json={"title": "x"}, headers=moderator.headers)
    assert patched.status_code == 200


async def test_an_admin_changes_every_item(app: FastAPI, client: httpx.AsyncClient) -> None:
    owner = await signed_in(app, client)
    admin = await signed_in(app, client, Role.ADMIN)
    item = await create(client, owner)
    replaced = await client.put(url(item["id"]), json={"title": "by admin"}, headers=admin.headers)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["owner_id"] == str(owner.user.id)  # ownership stays
    patched = await client.patch(url(item["id"]), json={"status": "active"}, headers=admin.headers)
    assert patched.json()["version"] == 3
    deleted = await client.delete(url(item["id"]), headers={**admin.headers, "If-Match": '"3"'})
    assert deleted.status_code == 204
    assert_error(await client.get(url(item["id"]), headers=owner.headers), 404, "NOT_FOUND")


# Replacing.


async def test_put_replaces_every_field(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    item = await create(client, me, description="long", status="active", tags=["a"])
    response = await client.put(url(item["id"]), json={"title": "Only"}, headers=me.headers)
    assert response.status_code == 200, response.text
    replaced = response.json()
    # Omitted fields return to their defaults.
    assert (replaced["title"], replaced["description"]) == ("Only", "")
    assert (replaced["status"], replaced["tags"]) == ("draft", [])
    assert replaced["version"] == 2
    assert response.headers["etag"] == '"2"'
    assert replaced["created_at"] == item["created_at"]
    assert replaced["updated_at"] > item["updated_at"]
    assert (await client.get(url(item["id"]), headers=me.headers)).json() == replaced


async def test_put_needs_a_title(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    item = await create(client, me)
    response = await client.put(url(item["id"]), json={"status": "active"}, headers=me.headers)
    assert ["body", "title"] in detail_locs(response)
    assert (await client.get(url(item["id"]), headers=me.headers)).json() == item


# Updating.


async def test_patch_changes_only_what_is_sent(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    item = await create(client, me, description="keep", tags=["keep"])
    response = await client.patch(url(item["id"]), json={"status": "archived"}, headers=me.headers)
    assert response.status_code == 200, response.text
    patched = response.json()
    assert patched["status"] == "archived"
    assert (patched["title"], patched["description"], patched["tags"]) == (
        item["title"],
        "keep",
        ["keep"],
    )
    assert patched["version"] == 2
    assert response.headers["etag"] == '"2"'


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"title": None}, ["body"]),
        ({"tags": None}, ["body"]),
        ({"title": ""}, ["body", "title"]),
        ({"tags": ["BAD"]}, ["body", "tags", 0]),
        ({"status": "gone"}, ["body", "status"]),
        ({"id": str(uuid.uuid4())}, ["body", "id"]),
    ],
)
async def test_patch_validates_the_body(
    app: FastAPI, client: httpx.AsyncClient, body: dict[str, Any], loc: list[Any]
) -> None:
    me = await signed_in(app, client)
    item = await create(client, me)
    response = await client.patch(url(item["id"]), json=body, headers=me.headers)
    assert loc in detail_locs(response)
    assert (await client.get(url(item["id"]), headers=me.headers)).json() == item


# If-Match on PUT, PATCH and DELETE.


@pytest.mark.parametrize(
    ("method", "body"),
    [("PUT", {"title": "new"}), ("PATCH", {"title": "new"}), ("DELETE", None)],
)
async def test_a_stale_if_match_is_412_and_changes_nothing(
    app: FastAPI, client: httpx.AsyncClient, method: str, body: dict[str, Any] | None
) -> None:
    me = await signed_in(app, client)
    item = await create(client, me)
    bumped = await client.patch(url(item["id"]), json={"title": "v2"}, headers=me.headers)
    current = bumped.json()
    for stale in ('"1"', 'W/"2"', '"3"', '"x"', "garbage"):
        response = await client.request(
            method, url(item["id"]), json=body, headers={**me.headers, "If-Match": stale}
        )
        assert_error(response, 412, "PRECONDITION_FAILED")
        assert (await client.get(url(item["id"]), headers=me.headers)).json() == current
    fresh = await client.request(
        method, url(item["id"]), json=body, headers={**me.headers, "If-Match": '"1", "2"'}
    )
    assert fresh.status_code == (204 if method == "DELETE" else 200), fresh.text


async def test_if_match_star_needs_only_the_item(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    item = await create(client, me)
    headers = {**me.headers, "If-Match": "*"}
    patched = await client.patch(url(item["id"]), json={"title": "any"}, headers=headers)
    assert patched.json()["version"] == 2
    missing = await client.patch(url(uuid.uuid4()), json={"title": "any"}, headers=headers)
    assert_error(missing, 404, "NOT_FOUND")


async def test_without_if_match_each_write_still_adds_one(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    item = await create(client, me)
    versions = []
    for n in range(3):
        response = await client.patch(url(item["id"]), json={"title": f"v{n}"}, headers=me.headers)
        versions.append(response.json()["version"])
    response = await client.put(url(item["id"]), json={"title": "last"}, headers=me.headers)
    versions.append(response.json()["version"])
    assert versions == [2, 3, 4, 5]


# Deleting.


async def test_delete_removes_the_item(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    item = await create(client, me)
    response = await client.delete(url(item["id"]), headers={**me.headers, "If-Match": '"1"'})
    assert response.status_code == 204
    assert response.content == b""
    assert_error(await client.get(url(item["id"]), headers=me.headers), 404, "NOT_FOUND")
    again = await client.delete(url(item["id"]), headers=me.headers)
    assert_error(again, 404, "NOT_FOUND")


async def test_deleting_the_account_deletes_its_items(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    moderator = await signed_in(app, client, Role.MODERATOR)
    item = await make_item(app, me.user.id)
    deleted = await client.delete("/api/v1/users/me", headers=me.headers)
    assert deleted.status_code == 204, deleted.text
    assert_error(await client.get(url(item.id), headers=moderator.headers), 404, "NOT_FOUND")
