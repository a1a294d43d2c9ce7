"""How a request finds its route (issue 12, points 7 and 8; API.md, Conventions).

`Allow` names every method of a path, HEAD is answered wherever GET is, a fixed path is
not taken for a template's id, and a trailing-slash redirect never echoes `Host`.
"""

from __future__ import annotations

import hashlib

import httpx
import pytest
from fastapi import FastAPI

from tests.factories.users import signed_in
from tests.support.assertions import assert_error

pytestmark = pytest.mark.anyio

ITEMS = "/api/v1/items"


def allowed(response: httpx.Response) -> set[str]:
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    return {method.strip() for method in response.headers["allow"].split(",")}


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("PUT", ITEMS, {"GET", "HEAD", "POST"}),
        (
            "POST",
            f"{ITEMS}/0190a4b2-7c1e-7000-8000-000000000001",
            {"GET", "HEAD", "PUT", "PATCH", "DELETE"},
        ),
        ("POST", "/api/v1/users/me", {"GET", "HEAD", "PATCH", "DELETE"}),
        ("DELETE", "/api/v1/auth/token", {"POST"}),
    ],
)
async def test_allow_lists_every_method_of_the_path(
    client: httpx.AsyncClient, method: str, path: str, expected: set[str]
) -> None:
    assert allowed(await client.request(method, path)) == expected


@pytest.mark.parametrize("method", ["DELETE", "PUT", "PATCH", "POST"])
async def test_a_fixed_path_with_the_wrong_method_is_405_not_a_bad_id(
    client: httpx.AsyncClient, method: str
) -> None:
    # /items/export is a path of its own (GET); /items/{item_id} must not take
    # "export" for an id and answer 422.
    assert allowed(await client.request(method, f"{ITEMS}/export")) == {"GET", "HEAD"}


async def test_a_template_still_answers_ids_that_are_not_fixed_paths(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    response = await client.delete(f"{ITEMS}/exports", headers=me.headers)
    assert_error(response, 422, "VALIDATION_ERROR")


async def test_head_answers_like_get_without_a_body(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    created = await client.post(ITEMS, json={"title": "t"}, headers=me.headers)
    item_url = created.headers["location"]
    get = await client.get(item_url, headers=me.headers)
    head = await client.head(item_url, headers=me.headers)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["etag"] == get.headers["etag"]
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["content-length"] == get.headers["content-length"]

    revalidated = await client.head(
        item_url, headers={**me.headers, "If-None-Match": get.headers["etag"]}
    )
    assert revalidated.status_code == 304
    assert (await client.head(ITEMS)).status_code == 401


async def test_head_on_a_download_sends_headers_without_reading_it_all(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    content = b"a line of text\n" * 140_000  # about 2 MiB: several chunks
    uploaded = await client.post(
        "/api/v1/files",
        files={"file": ("notes.txt", content, "text/plain")},
        headers=me.headers,
    )
    assert uploaded.status_code == 201, uploaded.text
    url = f"/api/v1/files/{uploaded.json()['id']}/content"
    head = await client.head(url, headers=me.headers)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(content))
    assert head.headers["etag"] == f'"{hashlib.sha256(content).hexdigest()}"'
    # The GET after it is whole: the HEAD's stopped stream left nothing behind.
    assert (await client.get(url, headers=me.headers)).content == content


async def test_head_on_an_export_is_200_without_a_body(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    for number in range(3):
        await client.post(ITEMS, json={"title": f"t{number}"}, headers=me.headers)
    head = await client.head(f"{ITEMS}/export", headers=me.headers)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"].startswith("application/x-ndjson")


async def test_trailing_slash_redirect_is_relative_and_ignores_host(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(f"{ITEMS}/?limit=5&sort=title", headers={"Host": "evil.example"})
    assert response.status_code == 307
    assert response.headers["location"] == f"{ITEMS}?limit=5&sort=title"


async def test_unknown_paths_stay_404(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/api/v1/nothing/"), 404, "NOT_FOUND")
    assert_error(await client.get("/api/v1/nothing"), 404, "NOT_FOUND")
