"""Upload, read, list, download and delete, on both backends (API.md, "Files")."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from keel.models import Role
from tests.factories.users import signed_in
from tests.files.support import FILES, PDF, PNG, row_count, sha256, stored_keys, upload

pytestmark = pytest.mark.anyio


async def test_upload_stores_the_bytes_and_answers_the_file(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    owner = await signed_in(app, client)
    response = await upload(client, owner.headers, PNG, filename="holiday.png")
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {
        "id",
        "owner_id",
        "filename",
        "content_type",
        "size",
        "sha256",
        "created_at",
    }
    assert body["owner_id"] == str(owner.user.id)
    assert body["filename"] == "holiday.png"
    assert body["content_type"] == "image/png"
    assert body["size"] == len(PNG)
    assert body["sha256"] == sha256(PNG)
    assert response.headers["location"] == f"{FILES}/{body['id']}"
    assert len(await stored_keys(app)) == 1

    read = await client.get(f"{FILES}/{body['id']}", headers=owner.headers)
    assert read.status_code == 200
    assert read.json() == body

    content = await client.get(f"{FILES}/{body['id']}/content", headers=owner.headers)
    assert content.status_code == 200
    assert content.content == PNG
    assert content.headers["content-type"] == "image/png"
    assert content.headers["etag"] == f'"{sha256(PNG)}"'
    assert content.headers["x-content-type-options"] == "nosniff"
    assert content.headers["accept-ranges"] == "bytes"
    assert content.headers["content-length"] == str(len(PNG))
    assert content.headers["content-disposition"] == (
        "attachment; filename=\"holiday.png\"; filename*=UTF-8''holiday.png"
    )


async def test_the_etag_answers_304(app: FastAPI, client: httpx.AsyncClient) -> None:
    owner = await signed_in(app, client)
    created = (await upload(client, owner.headers, PNG)).json()
    url = f"{FILES}/{created['id']}/content"
    tag = f'"{created["sha256"]}"'
    unchanged = await client.get(url, headers={**owner.headers, "If-None-Match": tag})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged.headers["etag"] == tag
    other = await client.get(url, headers={**owner.headers, "If-None-Match": '"abc"'})
    assert other.status_code == 200
    assert other.content == PNG


async def test_a_download_is_never_compressed(app: FastAPI, client: httpx.AsyncClient) -> None:
    owner = await signed_in(app, client)
    text = b"line of text\n" * 2000
    created = await upload(client, owner.headers, text, filename="a.txt", content_type="text/plain")
    assert created.status_code == 201, created.text
    response = await client.get(
        f"{FILES}/{created.json()['id']}/content",
        headers={**owner.headers, "Accept-Encoding": "gzip"},
    )
    assert response.status_code == 200
    assert "content-encoding" not in response.headers
    assert response.headers["content-length"] == str(len(text))
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.content == text


async def test_delete_removes_the_row_and_the_bytes(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    owner = await signed_in(app, client)
    created = (await upload(client, owner.headers, PDF, filename="a.pdf", content_type=None)).json()
    assert created["content_type"] == "application/pdf"
    assert len(await stored_keys(app)) == 1
    deleted = await client.delete(f"{FILES}/{created['id']}", headers=owner.headers)
    assert deleted.status_code == 204
    assert await stored_keys(app) == set()
    assert await row_count(app) == 0
    for method, path in (("GET", ""), ("GET", "/content"), ("DELETE", "")):
        gone = await client.request(method, f"{FILES}/{created['id']}{path}", headers=owner.headers)
        assert gone.status_code == 404
        assert gone.json()["error"]["code"] == "NOT_FOUND"


async def test_list_pages_own_files_and_sorts(app: FastAPI, client: httpx.AsyncClient) -> None:
    owner = await signed_in(app, client)
    other = await signed_in(app, client)
    sizes = [300, 100, 200]
    for index, size in enumerate(sizes):
        content = b"x" * size
        response = await upload(
            client, owner.headers, content, filename=f"f{index}.txt", content_type="text/plain"
        )
        assert response.status_code == 201
    await upload(client, other.headers, PNG)

    page = await client.get(FILES, params={"sort": "size", "limit": 2}, headers=owner.headers)
    assert page.status_code == 200
    body = page.json()
    assert [entry["size"] for entry in body["data"]] == [100, 200]
    rest = await client.get(
        FILES,
        params={"sort": "size", "limit": 2, "cursor": body["next_cursor"]},
        headers=owner.headers,
    )
    assert [entry["size"] for entry in rest.json()["data"]] == [300]
    assert rest.json()["next_cursor"] is None

    by_name = await client.get(
        FILES, params={"sort": "-filename", "include_total": "true"}, headers=owner.headers
    )
    assert [entry["filename"] for entry in by_name.json()["data"]] == ["f2.txt", "f1.txt", "f0.txt"]
    assert by_name.json()["total"] == 3

    newest_first = await client.get(FILES, headers=owner.headers)
    assert [entry["filename"] for entry in newest_first.json()["data"]] == [
        "f2.txt",
        "f1.txt",
        "f0.txt",
    ]
    bad_sort = await client.get(FILES, params={"sort": "owner_id"}, headers=owner.headers)
    assert bad_sort.status_code == 422


async def test_someone_elses_file_is_404_on_every_method(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    owner = await signed_in(app, client)
    stranger = await signed_in(app, client)
    created = (await upload(client, owner.headers, PNG)).json()
    base = f"{FILES}/{created['id']}"
    for method, path in (
        ("GET", ""),
        ("GET", "/content"),
        ("POST", "/link"),
        ("DELETE", ""),
    ):
        response = await client.request(method, f"{base}{path}", headers=stranger.headers)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] == "NOT_FOUND"
    listed = await client.get(FILES, headers=stranger.headers)
    assert listed.json()["data"] == []
    still = await client.get(f"{base}/content", headers=owner.headers)
    assert still.status_code == 200


async def test_moderators_read_every_file_admins_delete_any(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    owner = await signed_in(app, client)
    moderator = await signed_in(app, client, Role.MODERATOR)
    admin = await signed_in(app, client, Role.ADMIN)
    created = (await upload(client, owner.headers, PNG)).json()
    base = f"{FILES}/{created['id']}"
    assert (await client.get(base, headers=moderator.headers)).status_code == 200
    assert (await client.get(f"{base}/content", headers=moderator.headers)).content == PNG
    listed = await client.get(FILES, headers=moderator.headers)
    assert [entry["id"] for entry in listed.json()["data"]] == [created["id"]]
    refused = await client.delete(base, headers=moderator.headers)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "FORBIDDEN"
    assert (await client.delete(base, headers=admin.headers)).status_code == 204
    assert await stored_keys(app) == set()


async def test_credentials_are_required(app: FastAPI, client: httpx.AsyncClient) -> None:
    owner = await signed_in(app, client)
    created = (await upload(client, owner.headers, PNG)).json()
    for method, path in (
        ("GET", FILES),
        ("POST", FILES),
        ("GET", f"{FILES}/{created['id']}"),
        ("GET", f"{FILES}/{created['id']}/content"),
        ("POST", f"{FILES}/{created['id']}/link"),
        ("DELETE", f"{FILES}/{created['id']}"),
    ):
        response = await client.request(method, path)
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert (await client.get(f"{FILES}/not-a-uuid", headers=owner.headers)).status_code == 422
