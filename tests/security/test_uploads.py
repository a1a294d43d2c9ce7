"""Uploads that lie: disguised types and polyglots, hostile names, a lying
Content-Length. Whatever is stored is served as data, never as a page.

- ASVS 5.0 V5.2.2 (content checked against the type, magic bytes), V5.2.1 (sizes it can
  process), V5.3.2 (paths never from user names), V5.4.1/V5.4.2 (served names sanitised,
  RFC 6266 `Content-Disposition`), V3.4.4 (`nosniff`), V4.2.1 (message framing).
- OWASP API Security Top 10 2023 API4 (Unrestricted Resource Consumption) and API8.
- API.md "Files": detected types against an allow-list, never `text/html` served,
  `Content-Disposition: attachment`, 413 while the body streams, nothing left behind.

tests/files/test_rules.py covers the refused types (HTML as PNG, SVG, ZIP...) and the
basic hostile names (traversal, NUL, controls, RTL override, 300 characters); this
module adds polyglots, header-injection names, and lying lengths (live too).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi import FastAPI

from keel.config import Settings
from tests.conftest import SettingsFactory
from tests.files.support import FILES, PDF, PNG, raw_upload, row_count, stored_keys, upload
from tests.security.access import World
from tests.support.servers import HOST, live_env, serve, wait_until_healthy

pytestmark = pytest.mark.anyio

SCRIPT = b"<script>alert(document.domain)</script>"


@pytest.fixture
def settings(make_settings: SettingsFactory, tmp_path: Path) -> Settings:
    return make_settings(
        max_upload_bytes=64 * 1024, storage={"backend": "local", "local_path": tmp_path / "files"}
    )


async def _served_as_data(
    client: httpx.AsyncClient, headers: dict[str, str], file_id: str
) -> httpx.Response:
    download = await client.get(f"{FILES}/{file_id}/content", headers=headers)
    assert download.status_code == 200
    content_type = download.headers["content-type"].lower()
    assert "html" not in content_type
    assert "xml" not in content_type
    assert "svg" not in content_type
    assert "javascript" not in content_type
    assert download.headers["x-content-type-options"] == "nosniff"
    assert download.headers["content-disposition"].startswith("attachment;")
    assert "sandbox" in download.headers["content-security-policy"]
    return download


@pytest.mark.parametrize(
    ("content", "filename", "declared"),
    [
        (b"GIF89a/*\x00\x00*/=1;" + SCRIPT, "poly.gif", "image/gif"),  # GIF + JavaScript
        (PNG + b"<html><body>" + SCRIPT + b"</body></html>", "poly.png", "image/png"),
        (PDF + b"\n<html>" + SCRIPT, "poly.pdf", "application/pdf"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + SCRIPT * 20, "poly.jpg", "image/jpeg"),
        (b"hello\n<html>" + SCRIPT, "notes.html", "text/plain"),  # markup after a line
        (b'{"a": "<html>' + SCRIPT + b'"}', "data.json", "application/json"),
    ],
    ids=["gif-js", "png-html", "pdf-html", "jpeg-script", "text-then-html", "json-with-html"],
)
async def test_polyglots_are_stored_as_their_safe_type_and_served_as_data(
    app: FastAPI, client: httpx.AsyncClient, content: bytes, filename: str, declared: str
) -> None:
    owner = await World.make(app, client, "user")
    response = await upload(
        client, owner.headers, content, filename=filename, content_type=declared
    )
    if response.status_code == 415:
        return  # refused outright is as safe (and leaves nothing: checked below)
    assert response.status_code == 201, response.text
    assert response.json()["content_type"] == declared
    download = await _served_as_data(client, owner.headers, response.json()["id"])
    assert download.content == content


async def test_refused_disguises_leave_nothing(app: FastAPI, client: httpx.AsyncClient) -> None:
    owner = await World.make(app, client, "user")
    for content, filename, declared in (
        (b"<!doctype html>" + SCRIPT, "cat.png", "image/png"),
        (b"\xef\xbb\xbf  <html>" + SCRIPT, "cat.txt", "text/plain"),
        (b"<?xml version='1.0'?><svg onload='alert(1)'/>", "cat.gif", "image/gif"),
        (b"MZ\x90\x00" + bytes(200), "setup.png", "image/png"),
        (b"\x7fELF" + bytes(200), "tool.pdf", "application/pdf"),
    ):
        response = await upload(
            client, owner.headers, content, filename=filename, content_type=declared
        )
        assert response.status_code == 415, (filename, response.text)
    assert await stored_keys(app) == set()
    assert await row_count(app) == 0


@pytest.mark.parametrize(
    "sent",
    [
        "evil\r\nSet-Cookie: session=stolen.txt",
        'quote".txt; filename="other.exe',
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "C:\\Windows\\System32\\drivers\\etc\\hosts",
        "..\u2215..\u2215etc\u2215passwd",
        "\u202egnp.exe",
        "con.txt",
        "   ",
        "." * 300,
        "é" * 400 + ".txt",
    ],
    ids=[
        "crlf",
        "quote",
        "percent-encoded",
        "windows-path",
        "division-slash",
        "rtl",
        "device",
        "blank",
        "dots",
        "long-multibyte",
    ],
)
async def test_hostile_names_cannot_inject_or_escape(
    app: FastAPI, client: httpx.AsyncClient, sent: str
) -> None:
    owner = await World.make(app, client, "user")
    response = await raw_upload(client, owner.headers, b"plain text", filename=sent)
    assert response.status_code in (201, 400, 422), response.text
    if response.status_code != 201:
        assert await stored_keys(app) == set()
        return
    stored = response.json()["filename"]
    assert stored
    assert len(stored) <= 255
    assert "/" not in stored
    assert "\\" not in stored
    assert not stored.startswith(".")
    assert not any(char in stored for char in "\r\n\x00\u202e")
    download = await _served_as_data(client, owner.headers, response.json()["id"])
    disposition = download.headers["content-disposition"]
    assert disposition.isascii()
    assert "\r" not in disposition
    assert "\n" not in disposition
    assert "set-cookie" not in {name.lower() for name in download.headers}
    # One filename and one filename*, nothing smuggled between them.
    assert disposition.count("filename=") == 1
    assert disposition.count("filename*=") == 1
    for key in await stored_keys(app):
        assert stored not in key
        assert "passwd" not in key


async def test_a_content_length_that_understates_the_body_does_not_lift_the_limit(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    owner = await World.make(app, client, "user")
    boundary = "lying-length"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + PNG * 100
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = await client.post(
        FILES,
        content=body,
        headers={
            **owner.headers,
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": "1000",  # the limit counts the bytes that arrive
        },
    )
    assert response.status_code == 413, response.text
    assert await stored_keys(app) == set()
    assert await row_count(app) == 0


ADMIN = "uploads.admin@example.com"
PASSWORD = "a long and uncommon passphrase"


@pytest.mark.slow
async def test_lying_content_lengths_over_a_real_socket_store_nothing(
    tmp_path: Path, migrated_database: str
) -> None:
    files = tmp_path / "files"
    env = live_env(
        tmp_path,
        migrated_database,
        KEEL_FIRST_ADMIN_EMAIL=ADMIN,
        KEEL_FIRST_ADMIN_PASSWORD=PASSWORD,
        KEEL_STORAGE_LOCAL_PATH=str(files),
    )
    with serve(tmp_path, env) as server:
        await wait_until_healthy(server)
        async with httpx.AsyncClient(base_url=server.url) as client:
            login = await client.post(
                "/api/v1/auth/token", data={"username": ADMIN, "password": PASSWORD}
            )
            token = login.json()["access_token"]
        boundary = "live-lie"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
                "Content-Type: text/plain\r\n\r\n"
            ).encode()
            + b"x" * 5000
            + f"\r\n--{boundary}--\r\n".encode()
        )
        head = (
            f"POST /api/v1/files HTTP/1.1\r\nHost: keel\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        ).encode()
        # Shorter than the body: the server reads what was declared, which ends
        # mid-part, so there is no file; the rest is garbage, not a second request.
        short = head + b"Content-Length: 300\r\nConnection: close\r\n\r\n" + body
        with socket.create_connection((HOST, server.port), timeout=10) as sock:
            sock.sendall(short)
            answer = sock.recv(65536)
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, answer[:300]
        # Longer than the body, then the client goes: the upload is abandoned.
        long = head + b"Content-Length: 100000\r\n\r\n" + body
        with socket.create_connection((HOST, server.port), timeout=10) as sock:
            sock.sendall(long)
        async with httpx.AsyncClient(base_url=server.url) as client:
            listed = await client.get("/api/v1/files", headers={"Authorization": f"Bearer {token}"})
            assert listed.status_code == 200
            assert listed.json()["data"] == []
        # The abandoned upload is cleaned up once the server notices the client left.
        deadline = time.monotonic() + 10
        while (leftovers := [path for path in files.rglob("*") if path.is_file()]) and (
            time.monotonic() < deadline
        ):
            await anyio.sleep(0.1)
        assert leftovers == []
