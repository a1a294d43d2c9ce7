"""The Files section's rules, on both backends: types, names, ranges, the size limit,
the quota and its race, idempotency, deleting a user, metrics."""

from __future__ import annotations

import os
import shutil
from urllib.parse import unquote

import anyio
import httpx
import pytest
from fastapi import FastAPI

from tests.factories.users import SignedIn, signed_in
from tests.files.conftest import AppWith
from tests.files.support import (
    FILES,
    PDF,
    PNG,
    raw_upload,
    row_count,
    sha256,
    stored_keys,
    upload,
)

pytestmark = pytest.mark.anyio


async def _nothing_kept(app: FastAPI) -> None:
    assert await stored_keys(app) == set()
    assert await row_count(app) == 0


@pytest.mark.parametrize(
    ("content", "filename", "declared", "problem"),
    [
        (PNG, "scan.pdf", "application/pdf", "contradicts"),
        (PDF, "photo.png", "image/png", "contradicts"),
        (b"just some text", "photo.png", "image/png", "text, not image/png"),
        (b"<html><script>alert(1)</script></html>", "cat.png", "image/png", "HTML"),
        (b"<!DOCTYPE html><p>hi", "notes.txt", "text/plain", "HTML"),
        (
            b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
            "logo.png",
            None,
            "SVG",
        ),
        (b"PK\x03\x04" + bytes(200), "archive.zip", None, "not allowed"),
        (b"\xff\xfe\x00\x01binary", "data.bin", None, "not allowed"),
        (b'{"broken": ', "data.json", "application/json", "not valid JSON"),
        (b"caf\xe9 latin-1", "notes.txt", "text/plain", "UTF-8"),
    ],
)
async def test_refused_types_are_415_and_leave_nothing(
    app: FastAPI,
    client: httpx.AsyncClient,
    content: bytes,
    filename: str,
    declared: str | None,
    problem: str,
) -> None:
    owner = await signed_in(app, client)
    response = await upload(
        client, owner.headers, content, filename=filename, content_type=declared
    )
    assert response.status_code == 415, response.text
    error = response.json()["error"]
    assert error["code"] == "UNSUPPORTED_MEDIA_TYPE"
    assert problem in error["message"]
    await _nothing_kept(app)


@pytest.mark.parametrize(
    ("content", "declared", "stored_as"),
    [
        (PNG, None, "image/png"),
        (PNG, "application/octet-stream", "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(300), "image/jpg", "image/jpeg"),
        (b"GIF89a" + bytes(300), "image/gif", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(300), "image/webp", "image/webp"),
        (PDF, "application/pdf", "application/pdf"),
        ("plain text, ünïcode".encode(), None, "text/plain"),
        (b"a,b\n1,2\n", "text/csv", "text/csv"),
        (b'{"a": [1, 2, {"b": null}]}', "application/json", "application/json"),
        (b"", "text/plain", "text/plain"),
    ],
)
async def test_types_are_detected_from_the_bytes(
    app: FastAPI, client: httpx.AsyncClient, content: bytes, declared: str | None, stored_as: str
) -> None:
    owner = await signed_in(app, client)
    response = await upload(client, owner.headers, content, filename="f", content_type=declared)
    assert response.status_code == 201, response.text
    assert response.json()["content_type"] == stored_as
    download = await client.get(f"{FILES}/{response.json()['id']}/content", headers=owner.headers)
    assert download.content == content
    assert download.headers["content-type"].split(";")[0] == stored_as
    assert "html" not in download.headers["content-type"]


@pytest.mark.parametrize(
    ("sent", "stored", "ascii_name"),
    [
        ("../../etc/passwd", "passwd", "passwd"),
        ("..\\..\\windows\\system.ini", "system.ini", "system.ini"),
        ("re\x00port\x01\x1f.txt", "report.txt", "report.txt"),
        ("\u202etxt.exe", "txt.exe", "txt.exe"),
        ("...hidden", "hidden", "hidden"),
        ("../..", "file", "file"),
        ("naïve;name 'x'.txt", "naïve;name 'x'.txt", "naive_name 'x'.txt"),
        ("日本語.txt", "日本語.txt", ".txt"),
        ("a" * 300 + ".txt", "a" * 251 + ".txt", "a" * 251 + ".txt"),
    ],
)
async def test_names_are_stored_and_sent_safely(
    app: FastAPI, client: httpx.AsyncClient, sent: str, stored: str, ascii_name: str
) -> None:
    owner = await signed_in(app, client)
    response = await raw_upload(client, owner.headers, b"some text", filename=sent)
    assert response.status_code == 201, response.text
    assert response.json()["filename"] == stored
    download = await client.get(f"{FILES}/{response.json()['id']}/content", headers=owner.headers)
    disposition = download.headers["content-disposition"]
    assert disposition.startswith(f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''")
    assert disposition.isascii()
    assert not any(char in disposition for char in "\r\n\x00")
    encoded = disposition.split("filename*=UTF-8''", 1)[1]
    assert unquote(encoded) == stored
    # The storage key never derives from the name.
    assert all(stored not in key for key in await stored_keys(app)) or stored == "file"


BYTES = bytes(range(256)) * 4  # 1,024 bytes, every byte value, as text it is not
TEXT = b"0123456789" * 100  # 1,000 bytes


async def _text_file(app: FastAPI, client: httpx.AsyncClient) -> tuple[SignedIn, str]:
    """A user, and the content URL of a file of theirs holding TEXT."""
    owner = await signed_in(app, client)
    created = await upload(client, owner.headers, TEXT, filename="d.txt", content_type="text/plain")
    assert created.status_code == 201, created.text
    return owner, f"{FILES}/{created.json()['id']}/content"


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-9", 0, 9),  # the start
        ("bytes=500-599", 500, 599),  # the middle
        ("bytes=990-999", 990, 999),  # the end
        ("bytes=990-", 990, 999),  # open-ended
        ("bytes=-25", 975, 999),  # a suffix
        ("bytes=-5000", 0, 999),  # a suffix longer than the file
        ("bytes=995-5000", 995, 999),  # an end past the end is clipped
    ],
)
async def test_one_range_is_206(
    app: FastAPI, client: httpx.AsyncClient, header: str, start: int, end: int
) -> None:
    owner, url = await _text_file(app, client)
    response = await client.get(url, headers={**owner.headers, "Range": header})
    assert response.status_code == 206, response.text
    assert response.content == TEXT[start : end + 1]
    assert response.headers["content-range"] == f"bytes {start}-{end}/{len(TEXT)}"
    assert response.headers["content-length"] == str(end - start + 1)
    assert response.headers["etag"] == f'"{sha256(TEXT)}"'


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
async def test_a_range_past_the_end_is_416(
    app: FastAPI, client: httpx.AsyncClient, header: str
) -> None:
    owner, url = await _text_file(app, client)
    response = await client.get(url, headers={**owner.headers, "Range": header})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(TEXT)}"
    assert response.json()["error"]["code"] == "RANGE_NOT_SATISFIABLE"


@pytest.mark.parametrize(
    "header", ["bytes=0-1,5-6", "bytes=9-3", "items=0-5", "bytes=abc", "bytes=-"]
)
async def test_ranges_it_cannot_honour_exactly_get_the_whole_file(
    app: FastAPI, client: httpx.AsyncClient, header: str
) -> None:
    owner, url = await _text_file(app, client)
    response = await client.get(url, headers={**owner.headers, "Range": header})
    assert response.status_code == 200
    assert response.content == TEXT


async def test_if_range_with_a_stale_tag_gets_the_whole_file(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    owner, url = await _text_file(app, client)
    current = f'"{sha256(TEXT)}"'
    stale = await client.get(
        url, headers={**owner.headers, "Range": "bytes=0-4", "If-Range": '"x"'}
    )
    assert stale.status_code == 200
    assert stale.content == TEXT
    fresh = await client.get(
        url, headers={**owner.headers, "Range": "bytes=0-4", "If-Range": current}
    )
    assert fresh.status_code == 206
    assert fresh.content == TEXT[:5]


async def test_binary_ranges_are_exact(app: FastAPI, client: httpx.AsyncClient) -> None:
    owner = await signed_in(app, client)
    content = PNG + BYTES * 300  # past one download chunk (256 KiB)
    created = await upload(client, owner.headers, content)
    url = f"{FILES}/{created.json()['id']}/content"
    middle = await client.get(url, headers={**owner.headers, "Range": "bytes=100000-300000"})
    assert middle.status_code == 206
    assert middle.content == content[100_000:300_001]
    whole = await client.get(url, headers=owner.headers)
    assert sha256(whole.content) == created.json()["sha256"]


async def test_the_size_limit_is_413_and_leaves_nothing(app_with: AppWith) -> None:
    async with app_with(max_upload_bytes=2048) as (app, client):
        owner = await signed_in(app, client)
        at_limit = await upload(
            client, owner.headers, b"x" * 2048, filename="a.txt", content_type=None
        )
        assert at_limit.status_code == 201, at_limit.text
        over = await upload(client, owner.headers, b"x" * 2049, filename="b.txt", content_type=None)
        assert over.status_code == 413
        assert over.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
        assert "2048" in over.json()["error"]["message"]
        assert len(await stored_keys(app)) == 1
        assert await row_count(app) == 1
        metrics = (await client.get("/metrics")).text
        assert 'keel_file_uploads_refused_total{reason="too_large"} 1.0' in metrics
        assert "keel_file_bytes_uploaded_total 2048.0" in metrics


async def test_a_missing_file_field_is_422_and_a_non_multipart_body_415(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    owner = await signed_in(app, client)
    no_file = await client.post(FILES, files={"other": ("a.txt", b"x")}, headers=owner.headers)
    assert no_file.status_code == 422
    assert no_file.json()["error"]["details"][0]["loc"] == ["body", "file"]
    as_json = await client.post(FILES, json={"file": "x"}, headers=owner.headers)
    assert as_json.status_code == 415
    bad_key = await upload(
        client, owner.headers, PNG, extra_headers={"Idempotency-Key": "has spaces in it"}
    )
    assert bad_key.status_code == 422
    await _nothing_kept(app)


async def test_quota_is_413_with_its_own_message_and_frees_on_delete(app_with: AppWith) -> None:
    async with app_with({"quota_bytes_per_user": 3 * len(PNG)}) as (app, client):
        owner = await signed_in(app, client)
        other = await signed_in(app, client)
        created = [await upload(client, owner.headers, PNG) for _ in range(3)]
        assert [response.status_code for response in created] == [201, 201, 201]
        over = await upload(client, owner.headers, PNG)
        assert over.status_code == 413
        assert "quota" in over.json()["error"]["message"]
        assert len(await stored_keys(app)) == 3  # the refused upload's bytes are gone
        # The quota is per user.
        assert (await upload(client, other.headers, PNG)).status_code == 201
        # Deleting frees room.
        first = created[0].json()["id"]
        assert (await client.delete(f"{FILES}/{first}", headers=owner.headers)).status_code == 204
        assert (await upload(client, owner.headers, PNG)).status_code == 201
        metrics = (await client.get("/metrics")).text
        assert 'keel_file_uploads_refused_total{reason="quota"} 1.0' in metrics


async def test_two_concurrent_uploads_cannot_both_pass_a_quota_for_one(app_with: AppWith) -> None:
    size = 200_000
    async with app_with({"quota_bytes_per_user": size + size // 2}) as (app, client):
        owner = await signed_in(app, client)
        statuses: list[int] = []

        async def send(index: int) -> None:
            content = PNG + bytes([index]) * (size - len(PNG))
            response = await upload(client, owner.headers, content, filename=f"{index}.png")
            statuses.append(response.status_code)

        for _round in range(3):
            statuses.clear()
            async with anyio.create_task_group() as group:
                for index in range(4):
                    group.start_soon(send, index)
            assert sorted(statuses) == [201, 413, 413, 413] or sorted(statuses) == [413] * 4
            listed = await client.get(FILES, headers=owner.headers)
            assert len(listed.json()["data"]) == 1
            assert len(await stored_keys(app)) == 1
            for entry in listed.json()["data"]:
                await client.delete(f"{FILES}/{entry['id']}", headers=owner.headers)


async def test_idempotent_upload_replays_and_stores_once(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    owner = await signed_in(app, client)
    keyed = {"Idempotency-Key": "upload-1"}
    first = await upload(client, owner.headers, PNG, extra_headers=keyed)
    assert first.status_code == 201, first.text
    again = await upload(client, owner.headers, PNG, extra_headers=keyed)
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert len(await stored_keys(app)) == 1
    assert await row_count(app) == 1
    other_body = await upload(client, owner.headers, PNG + b"!", extra_headers=keyed)
    assert other_body.status_code == 422
    assert other_body.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert len(await stored_keys(app)) == 1
    # Another user's identical key is another key.
    stranger = await signed_in(app, client)
    theirs = await upload(client, stranger.headers, PNG, extra_headers=keyed)
    assert theirs.status_code == 201
    assert theirs.json()["id"] != first.json()["id"]


async def test_deleting_a_user_deletes_their_files_bytes(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    owner = await signed_in(app, client)
    keeper = await signed_in(app, client)
    for index in range(3):
        assert (
            await upload(client, owner.headers, PNG, filename=f"{index}.png")
        ).status_code == 201
    kept = (await upload(client, keeper.headers, PNG)).json()
    assert len(await stored_keys(app)) == 4
    deleted = await client.request("DELETE", "/api/v1/users/me", headers=owner.headers)
    assert deleted.status_code == 204, deleted.text
    # The test client waits for the jobs the request enqueued (tests/support/apps.py).
    assert await row_count(app) == 1
    remaining = await stored_keys(app)
    assert len(remaining) == 1
    still = await client.get(f"{FILES}/{kept['id']}/content", headers=keeper.headers)
    assert still.content == PNG


async def test_metrics_count_bytes_both_ways_and_refusals(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    owner = await signed_in(app, client)
    created = (await upload(client, owner.headers, PNG)).json()
    await client.get(f"{FILES}/{created['id']}/content", headers=owner.headers)
    await client.get(
        f"{FILES}/{created['id']}/content", headers={**owner.headers, "Range": "bytes=0-9"}
    )
    await upload(client, owner.headers, b"<html>", filename="x.png")
    metrics = (await client.get("/metrics")).text
    assert f"keel_file_bytes_uploaded_total {float(len(PNG))}" in metrics
    assert f"keel_file_bytes_downloaded_total {float(len(PNG) + 10)}" in metrics
    assert 'keel_file_uploads_refused_total{reason="type"} 1.0' in metrics


async def test_a_failing_store_is_503_and_leaves_no_row(
    app_with: AppWith, storage_backend: str
) -> None:
    broken = {"s3_bucket": "keel-test-no-such-bucket"} if storage_backend == "s3" else {}
    async with app_with(broken) as (app, client):
        if storage_backend == "local":
            shutil.rmtree(app.state.storage.incoming)  # the folder is gone from under it
        owner = await signed_in(app, client)
        response = await upload(client, owner.headers, PNG)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
        assert "retry-after" in response.headers
        assert await row_count(app) == 0
        metrics = (await client.get("/metrics")).text
        assert 'keel_file_uploads_refused_total{reason="storage"} 1.0' in metrics


async def test_a_large_upload_arrives_whole_in_order(app_with: AppWith) -> None:
    """Many batches (and on S3 three parts of a multipart upload, sent while the next
    fill): the stored bytes are exactly the uploaded ones."""
    mib = 1024 * 1024
    content = PNG + os.urandom(12 * mib + 12_345)
    async with app_with({"s3_part_bytes": 5 * mib}, max_upload_bytes=32 * mib) as (app, client):
        owner = await signed_in(app, client)
        created = await upload(client, owner.headers, content, filename="big.png")
        assert created.status_code == 201, created.text
        assert created.json()["sha256"] == sha256(content)
        assert created.json()["size"] == len(content)
        download = await client.get(
            f"{FILES}/{created.json()['id']}/content", headers=owner.headers
        )
        assert download.content == content
        tail = await client.get(
            f"{FILES}/{created.json()['id']}/content",
            headers={**owner.headers, "Range": f"bytes={5 * mib - 10}-{5 * mib + 9}"},
        )
        assert tail.content == content[5 * mib - 10 : 5 * mib + 10]
