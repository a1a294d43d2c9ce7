"""What a request may bring in (issue 12, points 3, 9 and 11; API.md, Conventions).

Every body that is not JSON is 422 `json_invalid`; no text anywhere may hold NUL (a 500
on PostgreSQL before); JSON types are taken as sent. Each case names the entry point
it was found at, and runs on both databases.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI

from keel.main import create_app
from keel.models import Role
from tests.conftest import SettingsFactory
from tests.factories.users import SignedIn, signed_in
from tests.support.apps import client_for
from tests.support.assertions import assert_error

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}
REGISTER = "/api/v1/auth/register"


def detail_of(response: httpx.Response) -> dict[str, Any]:
    details = assert_error(response, 422, "VALIDATION_ERROR")["details"]
    assert len(details) == 1, details
    detail: dict[str, Any] = details[0]
    return detail


# Bodies that are not JSON.

NOT_JSON = {
    "syntax": b'{"email": ',
    "invalid UTF-8": b'{"email": "a@example.com", "password": "\xff\xfe"}',
    "a lone surrogate": b'{"email": "a@example.com", "password": "\\ud800"}',
    "nesting 2,000 deep": b'{"email": ' + b"[" * 2000 + b"]" * 2000 + b"}",
    "a 5,000-digit integer": b'{"email": "a@example.com", "password": ' + b"9" * 5000 + b"}",
    "a number past a double": b'{"email": "a@example.com", "password": 1e400}',
    "NaN": b'{"email": "a@example.com", "password": NaN}',
}


@pytest.mark.parametrize("body", NOT_JSON.values(), ids=NOT_JSON.keys())
async def test_a_body_that_is_not_json_is_422_json_invalid(
    client: httpx.AsyncClient, body: bytes
) -> None:
    detail = detail_of(await client.post(REGISTER, content=body, headers=JSON))
    assert detail["type"] == "json_invalid"
    assert detail["loc"][0] == "body"


@pytest.mark.parametrize("charset", ["latin-1", "utf-16", "iso-8859-1"])
async def test_a_charset_other_than_utf8_is_422_json_invalid(
    client: httpx.AsyncClient, charset: str
) -> None:
    body = '{"email": "zoë@example.com", "password": "long enough pass"}'.encode(charset)
    response = await client.post(
        REGISTER, content=body, headers={"content-type": f"application/json; charset={charset}"}
    )
    assert detail_of(response)["type"] == "json_invalid"


async def test_utf8_named_as_the_charset_is_json(client: httpx.AsyncClient) -> None:
    body = '{"email": "zoë@example.com", "password": "long enough pass"}'.encode()
    for number, charset in enumerate(("utf-8", "UTF-8", '"utf-8"', "utf8")):
        response = await client.post(
            REGISTER,
            content=body.replace(b"zo", f"zo{number}".encode()),
            headers={"content-type": f"application/json; charset={charset}"},
        )
        assert response.status_code == 201, (charset, response.text)


# NUL in text.


async def test_nul_in_a_body_field_is_422_naming_it(client: httpx.AsyncClient) -> None:
    for field in ("email", "password", "full_name"):
        body = {"email": "nul@example.com", "password": "long enough pass", "full_name": "N"}
        body[field] = body[field][:2] + "\x00" + body[field][2:]
        detail = detail_of(await client.post(REGISTER, json=body))
        assert detail == {
            "loc": ["body", field],
            "msg": "Text may not contain the NUL character (U+0000)",
            "type": "string_nul",
        }


async def test_nul_deep_in_a_body_is_found(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    response = await client.post(
        "/api/v1/items", json={"title": "t", "tags": ["ok", "b\x00d"]}, headers=me.headers
    )
    assert detail_of(response)["loc"] == ["body", "tags", 1]
    response = await client.post("/api/v1/items", json={"title\x00": "t"}, headers=me.headers)
    assert detail_of(response)["type"] == "string_nul"


async def test_an_escaped_backslash_before_u0000_is_not_nul(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    # The JSON text \\u0000 is a backslash followed by "u0000": six ordinary characters.
    body = b'{"title": "a\\\\u0000b"}'
    response = await client.post("/api/v1/items", content=body, headers={**JSON, **me.headers})
    assert response.status_code == 201, response.text
    assert response.json()["title"] == "a\\u0000b"


async def test_nul_at_every_entry_point_is_refused(app: FastAPI, client: httpx.AsyncClient) -> None:
    user = await signed_in(app, client)
    admin = await signed_in(app, client, Role.ADMIN)
    nul = "a\x00b"
    json_calls: list[tuple[str, str, dict[str, Any], SignedIn | None]] = [
        ("POST", "/api/v1/auth/forgot-password", {"email": f"x{nul}@example.com"}, None),
        ("POST", "/api/v1/auth/verify-email", {"token": nul}, None),
        ("POST", "/api/v1/auth/reset-password", {"token": nul, "new_password": "x" * 12}, None),
        ("POST", "/api/v1/auth/logout", {"refresh_token": nul}, user),
        ("PATCH", "/api/v1/users/me", {"full_name": nul}, user),
        ("POST", "/api/v1/api-keys", {"name": nul}, user),
        ("POST", "/api/v1/items", {"title": nul}, user),
        ("POST", "/api/v1/users", {"email": "n@example.com", "password": nul * 6}, admin),
    ]
    for method, path, body, who in json_calls:
        headers = who.headers if who else {}
        response = await client.request(method, path, json=body, headers=headers)
        assert detail_of(response)["type"] == "string_nul", (method, path)

    for path in ("/api/v1/items", "/api/v1/items/export", "/api/v1/files", "/api/v1/users"):
        response = await client.get(path, params={"q": nul, "tag": nul}, headers=admin.headers)
        assert detail_of(response)["loc"][0] == "query", path


async def test_nul_in_the_token_form_is_invalid_request(client: httpx.AsyncClient) -> None:
    for form in (
        {"grant_type": "password", "username": "a\x00@example.com", "password": "x"},
        {"grant_type": "password", "username": "a@example.com", "password": "x\x00"},
        {"grant_type": "refresh_token", "refresh_token": "r\x00"},
    ):
        response = await client.post("/api/v1/auth/token", data=form)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_request"


# JSON types as sent.

LOOSE = [
    ("/api/v1/api-keys", {"name": "k", "expires_in_days": True}, "expires_in_days", "int_type"),
    ("/api/v1/api-keys", {"name": "k", "expires_in_days": "30"}, "expires_in_days", "int_type"),
    ("/api/v1/api-keys", {"name": "k", "expires_in_days": 30.5}, "expires_in_days", "int_type"),
    ("/api/v1/api-keys", {"name": 5}, "name", "string_type"),
    ("/api/v1/items", {"title": "t", "tags": "one"}, "tags", "list_type"),
]


@pytest.mark.parametrize(("path", "body", "field", "error_type"), LOOSE)
async def test_a_value_of_the_wrong_json_type_is_422(
    app: FastAPI, client: httpx.AsyncClient, path: str, body: Any, field: str, error_type: str
) -> None:
    me = await signed_in(app, client)
    detail = detail_of(await client.post(path, json=body, headers=me.headers))
    assert detail["loc"] == ["body", field]
    assert detail["type"] == error_type


async def test_an_integer_may_be_written_with_a_zero_fraction(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    # JSON Schema's "integer" admits 30.0, and so may every client generated from it.
    me = await signed_in(app, client)
    response = await client.post(
        "/api/v1/api-keys", json={"name": "k", "expires_in_days": 30.0}, headers=me.headers
    )
    assert response.status_code == 201, response.text


async def test_booleans_are_only_true_and_false(app: FastAPI, client: httpx.AsyncClient) -> None:
    admin = await signed_in(app, client, Role.ADMIN)
    body = {"email": "strict@example.com", "password": "long enough pass"}
    for loose in (0, 1, "true", "yes"):
        response = await client.post(
            "/api/v1/users", json={**body, "is_verified": loose}, headers=admin.headers
        )
        assert detail_of(response)["type"] == "bool_type", loose
    response = await client.post(
        "/api/v1/users",
        json={**body, "is_verified": True, "role": "moderator"},
        headers=admin.headers,
    )
    assert response.status_code == 201, response.text
    assert response.json()["role"] == "moderator"


async def test_enums_still_come_as_their_text(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    response = await client.post(
        "/api/v1/items", json={"title": "t", "status": "active"}, headers=me.headers
    )
    assert response.status_code == 201, response.text
    response = await client.post(
        "/api/v1/items", json={"title": "t", "status": "gone"}, headers=me.headers
    )
    assert detail_of(response)["type"] == "enum"


# A body that stops arriving.


async def test_a_json_body_that_stops_arriving_is_408(
    make_settings: SettingsFactory, migrated_database: str
) -> None:
    app = create_app(make_settings(http={"receive_timeout_seconds": 0.5}))

    async def stalls() -> AsyncIterator[bytes]:
        yield b'{"email": "slow@example.com", '
        await anyio.sleep(3)
        yield b'"password": "long enough pass"}'

    async with client_for(app) as client:
        started = anyio.current_time()
        response = await client.post(REGISTER, content=stalls(), headers=JSON)
        assert anyio.current_time() - started < 2.5
        assert_error(response, 408, "REQUEST_TIMEOUT")
        assert response.headers["connection"] == "close"

        async def trickles() -> AsyncIterator[bytes]:
            for piece in (b'{"email": "slow@example.com", ', b'"password": "long enough pass"}'):
                await anyio.sleep(0.2)  # pauses shorter than the timeout
                yield piece

        response = await client.post(REGISTER, content=trickles(), headers=JSON)
        assert response.status_code == 201, response.text
