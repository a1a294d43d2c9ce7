"""No mass assignment: on every write body, a field the operation does not take (id,
owner_id, role, version, created_at, is_verified...) is 422 and changes nothing.

- ASVS 5.0 V15.3.3 (mass assignment: only the fields meant for each action) and
  V8.2.3 (field-level access, BOPLA).
- OWASP API Security Top 10 2023 API3 (Broken Object Property Level Authorization).
- API.md "Conventions": unknown fields in a request body are rejected with 422.
- RFC 6749 §3.2: the token endpoint ignores parameters it does not know, so there the
  check is that none of them reaches the token.

The bodies come from /openapi.json: a new JSON body is covered as soon as it exists.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from keel.config import Settings
from keel.models import Base, File
from tests.auth.test_token import unverified_claims
from tests.conftest import SettingsFactory
from tests.factories.users import DEFAULT_PASSWORD, make_user
from tests.files.support import PNG
from tests.security.access import EXPECTED, World, route_id
from tests.security.support import NO_LIMITS
from tests.support.assertions import assert_error

pytestmark = pytest.mark.anyio

# Fields a client must never set where the operation does not name them.
FOREIGN_FIELDS = (
    "id",
    "owner_id",
    "user_id",
    "role",
    "version",
    "created_at",
    "updated_at",
    "is_verified",
    "is_active",
    "is_admin",
    "email",
    "password",
    "hashed_password",
    "key",
    "prefix",
    "last_used_at",
    "expires_at",
    "session_id",
    "sha256",
    "size",
    "content_type",
    "current",
    "__proto__",
)


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(limit=NO_LIMITS)


async def _json_bodies(client: httpx.AsyncClient) -> dict[tuple[str, str], dict[str, Any]]:
    """Each operation's JSON body schema (its $ref resolved), from /openapi.json."""
    schema = (await client.get("/openapi.json")).json()
    bodies = {}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" not in content:
                continue
            body = content["application/json"]["schema"]
            while "$ref" in body or "anyOf" in body:
                if "anyOf" in body:  # an optional body: the object among the choices
                    body = next(choice for choice in body["anyOf"] if choice.get("type") != "null")
                    continue
                name = body["$ref"].rsplit("/", 1)[-1]
                body = schema["components"]["schemas"][name]
            bodies[(method.upper(), path)] = body
    return bodies


JSON_WRITES = [
    ("POST", "/api/v1/auth/register"),
    ("POST", "/api/v1/auth/logout"),
    ("POST", "/api/v1/auth/verify-email"),
    ("POST", "/api/v1/auth/forgot-password"),
    ("POST", "/api/v1/auth/reset-password"),
    ("PATCH", "/api/v1/users/me"),
    ("POST", "/api/v1/users/me/password"),
    ("POST", "/api/v1/users"),
    ("PATCH", "/api/v1/users/{user_id}"),
    ("POST", "/api/v1/api-keys"),
    ("POST", "/api/v1/items"),
    ("PUT", "/api/v1/items/{item_id}"),
    ("PATCH", "/api/v1/items/{item_id}"),
    ("POST", "/api/v1/files/{file_id}/link"),
]


async def test_every_json_body_is_listed_and_closed(client: httpx.AsyncClient) -> None:
    bodies = await _json_bodies(client)
    assert set(bodies) == set(JSON_WRITES)
    for key, body in bodies.items():
        assert body.get("additionalProperties") is False, key


async def _everything(app: FastAPI) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table: what a refused request must leave exactly as it was."""
    async with app.state.resources.engine.connect() as connection:
        return {
            table.name: sorted(
                (tuple(map(str, row)) for row in await connection.execute(select(table))),
            )
            for table in Base.metadata.sorted_tables
        }


@pytest.mark.parametrize("route", JSON_WRITES, ids=route_id)
async def test_a_field_the_operation_does_not_take_is_422_and_not_applied(
    app: FastAPI, client: httpx.AsyncClient, route: tuple[str, str]
) -> None:
    allowed = set((await _json_bodies(client))[route]["properties"])
    # An admin signed in with a password: the one caller every route accepts.
    world = await World.make(app, client, "admin")
    url, arguments = await world.prepare(*route)
    assert route in EXPECTED
    valid: dict[str, Any] = arguments["json"]
    for field in FOREIGN_FIELDS:
        if field in allowed:
            continue
        before = await _everything(app)
        for value in ("admin", True, 99, None, {"nested": "admin"}, str(world.owner.user.id)):
            response = await world.send(route[0], url, {"json": {**valid, field: value}})
            error = assert_error(response, 422, "VALIDATION_ERROR")
            assert any(
                detail["loc"] == ["body", field] and detail["type"] == "extra_forbidden"
                for detail in error["details"]
            ), (field, error)
        assert await _everything(app) == before, field
    # The control: the same body without the foreign field is accepted.
    accepted = await world.send(route[0], url, {"json": valid})
    assert accepted.status_code == EXPECTED[route].ok, accepted.text


async def test_the_token_endpoint_lets_no_parameter_reach_the_token(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    smuggled = {
        "role": "admin",
        "scope": "admin users:manage",
        "sub": "00000000-0000-0000-0000-000000000001",
        "aud": "another-api",
        "sid": "00000000-0000-0000-0000-000000000002",
        "expires_in": "999999999",
    }
    response = await client.post(
        "/api/v1/auth/token",
        data={
            "grant_type": "password",
            "username": user.email,
            "password": DEFAULT_PASSWORD,
            **smuggled,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["expires_in"] == 900
    claims = unverified_claims(body["access_token"])
    assert (claims["role"], claims["sub"], claims["aud"]) == ("user", str(user.id), "keel-api")
    assert claims["sid"] != smuggled["sid"]
    refreshed = await client.post(
        "/api/v1/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"], **smuggled},
    )
    assert refreshed.status_code == 200, refreshed.text
    assert unverified_claims(refreshed.json()["access_token"])["role"] == "user"


async def test_extra_multipart_fields_never_reach_the_file(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    owner = await World.make(app, client, "user")
    victim = await make_user(app)
    extra = {
        "owner_id": str(victim.id),
        "id": "00000000-0000-0000-0000-000000000003",
        "sha256": "0" * 64,
        "size": "1",
        "content_type": "text/html",
        "filename": "../../evil.html",
    }
    response = await client.post(
        "/api/v1/files",
        data=extra,
        files={"file": ("photo.png", PNG, "image/png")},
        headers=owner.owner.headers,
    )
    # The form's other fields are not the file's properties: ignored, or refused.
    assert response.status_code in (201, 422), response.text
    async with app.state.resources.engine.connect() as connection:
        rows = (await connection.execute(select(File))).mappings().all()
    for row in rows:
        assert (str(row["owner_id"]), row["filename"]) == (str(owner.owner.user.id), "photo.png")
        assert (row["content_type"], row["size"]) == ("image/png", len(PNG))
        assert str(row["id"]) != extra["id"]
        assert row["sha256"] != extra["sha256"]
