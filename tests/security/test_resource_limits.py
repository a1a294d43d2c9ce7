"""Hostile requests are refused with a 4xx, quickly: huge pages, 20 MB bodies, deep
nesting, numbers no parser should build, bytes that are no text, wrong content types,
unused methods, giant headers.

- ASVS 5.0 V2.4.1 and OWASP API Security Top 10 2023 API4 (Unrestricted Resource
  Consumption): limits on sizes, depths and page sizes, refused before the work.
- ASVS 5.0 V2.2.1 and V15.3.5: input validated against strict types (`true` is no
  number, NUL is no text).
- ASVS 5.0 V4.1.4 (only the methods the API uses) and V13.4.4 (no TRACE).
- ASVS 5.0 V4.2.1 (message framing) and RFC 6585 §5 (431 for header fields too large).
- API.md "Conventions" and "Errors": 413 over 1 MiB, 415 for another content type,
  422 `json_invalid` for a body that is not JSON, 405 with `Allow`, limit 1-100.

"Within a second" is the requirement's own bound (a refusal must cost the server
nothing like the work it refuses); it is asserted on each refusal, and generous for
a loaded machine: the work refused would take far longer, or never end.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel.config import Settings
from tests.conftest import SettingsFactory
from tests.security.access import World
from tests.security.support import NO_LIMITS
from tests.support.assertions import assert_error
from tests.support.servers import HOST, live_env, serve, wait_until_healthy

pytestmark = pytest.mark.anyio

QUICK_SECONDS = 1.0
MB = 1024 * 1024
COLLECTIONS = [
    "/api/v1/items",
    "/api/v1/files",
    "/api/v1/users",
    "/api/v1/api-keys",
    "/api/v1/auth/sessions",
]


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(limit=NO_LIMITS, max_upload_bytes=MB)


@pytest.fixture
async def admin(app: FastAPI, client: httpx.AsyncClient) -> World:
    return await World.make(app, client, "admin")


async def _quick(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    started = time.perf_counter()
    response = await client.request(method, url, **kwargs)
    elapsed = time.perf_counter() - started
    assert 400 <= response.status_code < 500, response.text[:500]
    assert elapsed < QUICK_SECONDS, f"{method} {url} took {elapsed:.2f} s"
    return response


@pytest.mark.parametrize(
    "limit", ["101", "1000000000", "99999999999999999999999", "0", "-1", "1e3", "true", "", "NaN"]
)
@pytest.mark.parametrize("collection", COLLECTIONS)
async def test_a_page_size_out_of_range_is_422(
    client: httpx.AsyncClient, admin: World, collection: str, limit: str
) -> None:
    response = await _quick(
        client, "GET", collection, params={"limit": limit}, headers=admin.headers
    )
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert ["query", "limit"] in [detail["loc"] for detail in error["details"]]


JSON_ROUTES = [
    ("POST", "/api/v1/items"),
    ("POST", "/api/v1/auth/register"),
    ("PATCH", "/api/v1/users/me"),
]


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
async def test_a_20_mb_body_is_413_before_it_is_read(
    client: httpx.AsyncClient, admin: World, method: str, path: str
) -> None:
    body = b'{"title": "' + b"x" * (20 * MB) + b'"}'
    headers = {**admin.headers, "content-type": "application/json"}
    declared = await _quick(client, method, path, content=body, headers=headers)
    assert_error(declared, 413, "PAYLOAD_TOO_LARGE")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for start in range(0, len(body), MB):
            yield body[start : start + MB]

    streamed = await _quick(client, method, path, content=chunks(), headers=headers)
    assert_error(streamed, 413, "PAYLOAD_TOO_LARGE")


async def test_a_20_mb_form_or_multipart_body_is_refused_too(
    client: httpx.AsyncClient, admin: World
) -> None:
    form = b"username=a%40b.io&password=" + b"x" * (20 * MB)
    token = await _quick(
        client,
        "POST",
        "/api/v1/auth/token",
        content=form,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert token.status_code == 413
    # Multipart on a JSON route: another content type, refused before reading.
    multipart = await _quick(
        client,
        "POST",
        "/api/v1/items",
        files={"file": ("big.bin", b"x" * (20 * MB), "application/octet-stream")},
        headers=admin.headers,
    )
    assert_error(multipart, 415, "UNSUPPORTED_MEDIA_TYPE")
    upload = await _quick(
        client,
        "POST",
        "/api/v1/files",
        files={"file": ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(20 * MB), "image/png")},
        headers=admin.headers,
    )
    assert_error(upload, 413, "PAYLOAD_TOO_LARGE")


def _nested(depth: int) -> bytes:
    return b'{"title": "deep", "tags": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    "body",
    [
        _nested(100_000),
        _nested(5_000),
        b'{"title": ' + b"9" * 100_000 + b"}",
        b'{"title": "x", "status": ' + b"1" * 5_000 + b"}",
        b'{"title": "caf\xe9"}',
        b'{"title": "\xed\xa0\x80"}',
        b'{"title": "x"',
    ],
    ids=[
        "nested-100000",
        "nested-5000",
        "huge-int-title",
        "huge-int-status",
        "latin-1-byte",
        "utf-8-surrogate",
        "truncated",
    ],
)
async def test_a_body_that_is_not_json_is_422_json_invalid(
    client: httpx.AsyncClient, admin: World, body: bytes
) -> None:
    headers = {**admin.headers, "content-type": "application/json"}
    response = await _quick(client, "POST", "/api/v1/items", content=body, headers=headers)
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert [detail["type"] for detail in error["details"]] == ["json_invalid"], error


@pytest.mark.parametrize("charset", ["latin-1", "utf-16", "shift_jis"])
async def test_json_in_another_charset_is_422_json_invalid(
    client: httpx.AsyncClient, admin: World, charset: str
) -> None:
    # RFC 8259 §8.1: JSON between systems is UTF-8; a body announced otherwise is not
    # read as something else.
    headers = {**admin.headers, "content-type": f"application/json; charset={charset}"}
    title = "日本" if charset != "latin-1" else "Zoë"
    body = f'{{"title": "{title}"}}'.encode(charset)
    response = await _quick(client, "POST", "/api/v1/items", content=body, headers=headers)
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert [detail["type"] for detail in error["details"]] == ["json_invalid"], error


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/api/v1/items", {"title": "a\u0000b"}, "title"),
        ("POST", "/api/v1/items", {"title": "ok", "description": "\u0000"}, "description"),
        ("PATCH", "/api/v1/users/me", {"full_name": "Ann\u0000Admin"}, "full_name"),
        ("POST", "/api/v1/api-keys", {"name": "k\u0000"}, "name"),
        ("POST", "/api/v1/api-keys", {"name": "k", "expires_in_days": True}, "expires_in_days"),
        ("POST", "/api/v1/api-keys", {"name": "k", "expires_in_days": "30"}, "expires_in_days"),
        ("POST", "/api/v1/api-keys", {"name": "k", "expires_in_days": 30.5}, "expires_in_days"),
        ("POST", "/api/v1/items", {"title": True}, "title"),
        ("POST", "/api/v1/items", {"title": 12}, "title"),
        ("POST", "/api/v1/items", {"title": "t", "tags": "not-a-list"}, "tags"),
    ],
    ids=[
        "nul-title",
        "nul-description",
        "nul-name",
        "nul-key-name",
        "true-as-number",
        "string-as-number",
        "fraction-as-integer",
        "true-as-string",
        "number-as-string",
        "string-as-list",
    ],
)
async def test_values_of_the_wrong_kind_are_422_not_coerced(
    client: httpx.AsyncClient,
    admin: World,
    method: str,
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    response = await _quick(client, method, path, json=body, headers=admin.headers)
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert ["body", field] in [detail["loc"][:2] for detail in error["details"]], error


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/xml",
        "application/x-www-form-urlencoded",
        "text/json",
        "application/jsonp",
        "application/json-seq",
        "application/javascript",
    ],
)
async def test_another_content_type_on_a_json_route_is_415(
    client: httpx.AsyncClient, admin: World, content_type: str
) -> None:
    headers = {**admin.headers, "content-type": content_type}
    response = await _quick(
        client, "POST", "/api/v1/items", content=b'{"title": "t"}', headers=headers
    )
    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")


@pytest.mark.parametrize("method", ["TRACE", "TRACK", "CONNECT", "PROPFIND", "FOO"])
@pytest.mark.parametrize(
    "path", ["/api/v1/items", "/api/v1/users/me", "/health", "/api/v1/auth/token"]
)
async def test_methods_the_api_does_not_use_are_405_with_allow(
    client: httpx.AsyncClient, admin: World, method: str, path: str
) -> None:
    secret = admin.headers["Authorization"]
    response = await _quick(client, method, path, headers={**admin.headers, "X-Probe": "echo-me"})
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    allowed = {name.strip() for name in response.headers["allow"].split(",")}
    assert allowed
    assert method not in allowed
    assert allowed <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
    # TRACE's danger is the echo: nothing of the request comes back.
    assert secret not in response.text
    assert "echo-me" not in response.text


@pytest.mark.parametrize(
    "path", ["/api/v1/items", "/api/v1/users/me", "/health", "/.well-known/jwks.json"]
)
async def test_head_on_a_get_route_answers_like_get_without_a_body(
    client: httpx.AsyncClient, admin: World, path: str
) -> None:
    got = await client.get(path, headers=admin.headers)
    head = await client.head(path, headers=admin.headers)
    assert head.status_code == got.status_code == 200, head.text
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]


@pytest.mark.parametrize("path", ["/api/v1/items/", "/api/v1/users/me/", "/api/v1/auth/token/"])
async def test_a_trailing_slash_redirects_on_this_host_only(
    client: httpx.AsyncClient, admin: World, path: str
) -> None:
    # API.md: collection paths have no trailing slash. The redirect to the canonical
    # path is relative: a Location built from the client's Host header could send the
    # client's credential and body to another host (issue 12, point 7).
    method = "POST" if path.endswith("token/") else "GET"
    headers = {**admin.headers, "Host": "attacker.example"}
    response = await client.request(method, path + "?a=1", headers=headers)
    assert response.status_code == 307
    assert response.headers["location"] == path.rstrip("/") + "?a=1"


def _raw_request(port: int, request: bytes) -> tuple[bytes, float]:
    """Send raw bytes, read the answer until the server closes or 2 s pass."""
    started = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=5) as sock:
        # The server may stop reading early: its answer is what matters.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        sock.settimeout(2)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer:
                    break
        except (TimeoutError, ConnectionResetError):
            pass
    return answer, time.perf_counter() - started


@pytest.mark.slow
async def test_giant_request_headers_are_431_over_a_real_socket(
    tmp_path: Path, migrated_database: str
) -> None:
    with serve(tmp_path, live_env(tmp_path, migrated_database)) as server:
        await wait_until_healthy(server)
        for giant in (
            b"X-Giant: " + b"a" * (64 * 1024) + b"\r\n",
            b"Authorization: Bearer " + b"a" * (256 * 1024) + b"\r\n",
            b"".join(b"X-Many-%d: v\r\n" % number for number in range(10_000)),
        ):
            request = b"GET /health HTTP/1.1\r\nHost: keel\r\n" + giant + b"\r\n"
            answer, elapsed = _raw_request(server.port, request)
            assert elapsed < QUICK_SECONDS, f"took {elapsed:.2f} s"
            status_line = answer.split(b"\r\n", 1)[0]
            assert status_line.startswith(b"HTTP/1.1 431"), answer[:300]
        # The server is still there for everyone else.
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.get("/health")).status_code == 200
