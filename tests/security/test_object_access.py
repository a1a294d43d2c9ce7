"""Object-level access control: another user's item, file, API key or session, through
every method of every route that names one, and through every collection.

- ASVS 5.0 V8.2.2 (data-specific access: no IDOR/BOLA) and V8.3.1.
- OWASP API Security Top 10 2023 API1 (Broken Object Level Authorization).
- API.md: someone else's item or file is 404 to a user; a moderator reads every item
  and file, and changing someone else's is 403; an admin reads and changes every
  item and file; sessions and API keys are each caller's own (404 otherwise, admins
  included); a user naming another owner in `owner_id` is 403.

tests/items and tests/files check a few of these by hand; here every route with an
object id is covered, and a new one without an entry fails.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel.config import Settings
from keel.models import Role
from tests.auth.test_token import unverified_claims
from tests.conftest import SettingsFactory
from tests.factories.users import SignedIn, signed_in
from tests.security.access import EXPECTED, World, route_id
from tests.security.support import NO_LIMITS, bearer
from tests.support.assertions import assert_error

pytestmark = pytest.mark.anyio

CALLERS = ("user", "user_key", "moderator", "moderator_key", "admin", "admin_key")
ROLES = {"user": Role.USER, "moderator": Role.MODERATOR, "admin": Role.ADMIN}

# What each caller gets on the victim's object (API.md), by route. A key acts as its
# owner, except on routes that need a password sign-in (403 before any lookup).
Outcomes = dict[str, int | None]
ITEM_READ: Outcomes = {"user": 404, "moderator": 200, "admin": 200}
ITEM_WRITE: Outcomes = {"user": 404, "moderator": 403, "admin": None}  # None: the route's success
FILE_READ: Outcomes = {"user": 404, "moderator": 200, "admin": 200}
OWN_ONLY: Outcomes = {"user": 404, "moderator": 404, "admin": 404}

OBJECT_RULES: dict[tuple[str, str], Outcomes] = {
    ("GET", "/api/v1/items/{item_id}"): ITEM_READ,
    ("PUT", "/api/v1/items/{item_id}"): ITEM_WRITE,
    ("PATCH", "/api/v1/items/{item_id}"): ITEM_WRITE,
    ("DELETE", "/api/v1/items/{item_id}"): ITEM_WRITE,
    ("GET", "/api/v1/files/{file_id}"): FILE_READ,
    ("GET", "/api/v1/files/{file_id}/content"): FILE_READ,
    ("POST", "/api/v1/files/{file_id}/link"): FILE_READ,
    ("DELETE", "/api/v1/files/{file_id}"): ITEM_WRITE,
    ("DELETE", "/api/v1/api-keys/{key_id}"): OWN_ONLY,
    ("DELETE", "/api/v1/auth/sessions/{session_id}"): OWN_ONLY,
}
# Routes with an id that are not about ownership: users are administered by role
# (the access matrix covers them), a signed link is its own credential.
NOT_OWNED = {
    ("GET", "/api/v1/users/{user_id}"),
    ("PATCH", "/api/v1/users/{user_id}"),
    ("DELETE", "/api/v1/users/{user_id}"),
    ("GET", "/api/v1/files/{file_id}/download"),
}


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(limit=NO_LIMITS)


def test_every_route_naming_an_object_has_a_rule() -> None:
    with_ids = {key for key in EXPECTED if re.search(r"\{\w+_id\}", key[1])}
    assert with_ids - NOT_OWNED == set(OBJECT_RULES)


async def _caller(app: FastAPI, client: httpx.AsyncClient, caller: str) -> dict[str, str]:
    who = await signed_in(app, client, ROLES[caller.removesuffix("_key")])
    if not caller.endswith("_key"):
        return who.headers
    created = await client.post("/api/v1/api-keys", json={"name": "k"}, headers=who.headers)
    assert created.status_code == 201, created.text
    return bearer(created.json()["key"])


async def _victim_state(client: httpx.AsyncClient, victim: SignedIn) -> dict[str, Any]:
    """Everything of the victim's that a refused call must leave as it was."""
    state: dict[str, Any] = {}
    for name in ("items", "files", "api-keys"):
        page = await client.get(f"/api/v1/{name}", headers=victim.headers)
        assert page.status_code == 200, page.text
        state[name] = page.json()["data"]
    sessions = await client.get("/api/v1/auth/sessions", headers=victim.headers)
    state["sessions"] = [row["id"] for row in sessions.json()["data"]]
    return state


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("route", list(OBJECT_RULES), ids=route_id)
async def test_another_users_object(
    app: FastAPI, client: httpx.AsyncClient, route: tuple[str, str], caller: str
) -> None:
    # The victim owns the object; the caller is someone else.
    victim = await World.make(app, client, "user")
    headers = await _caller(app, client, caller)
    victim.headers = headers
    rule = OBJECT_RULES[route]
    needs_password = EXPECTED[route].policy == "password"
    expected = rule[caller.removesuffix("_key")]
    if caller.endswith("_key") and needs_password:
        expected = 403
    if expected is None:
        expected = EXPECTED[route].ok

    url, arguments = await victim.prepare(*route)
    before = await _victim_state(client, victim.owner)
    response = await victim.send(route[0], url, arguments)
    assert response.status_code == expected, (route, caller, response.text)
    if expected in (403, 404):
        assert_error(response, expected, "FORBIDDEN" if expected == 403 else "NOT_FOUND")
        # Refused means untouched: nothing of the victim's changed, nothing leaked.
        assert await _victim_state(client, victim.owner) == before
        assert victim.owner.user.email not in response.text


@pytest.mark.parametrize("caller", ["user", "user_key"])
async def test_collections_show_a_user_only_their_own(
    app: FastAPI, client: httpx.AsyncClient, caller: str
) -> None:
    victim = await World.make(app, client, "user")
    item, file, key = await victim.item(), await victim.file(), await victim.api_key()
    headers = await _caller(app, client, caller)
    for path, secret in (("/api/v1/items", item), ("/api/v1/files", file)):
        page = await client.get(path, headers=headers, params={"include_total": "true"})
        assert page.status_code == 200, page.text
        assert secret["id"] not in page.text
        assert page.json()["total"] == 0
    export = await client.get("/api/v1/items/export", headers=headers)
    assert export.status_code == 200
    assert item["id"] not in export.text
    for path in ("/api/v1/items", "/api/v1/items/export"):
        named = await client.get(
            path, headers=headers, params={"owner_id": str(victim.owner.user.id)}
        )
        assert_error(named, 403, "FORBIDDEN")
    if caller == "user":
        listings: list[tuple[str, dict[str, Any] | None]] = [
            ("/api/v1/api-keys", key),
            ("/api/v1/auth/sessions", None),
        ]
        for path, hidden in listings:
            page = await client.get(path, headers=headers)
            assert page.status_code == 200, page.text
            if hidden is not None:
                assert hidden["id"] not in page.text
            assert unverified_claims(victim.owner.access_token)["sid"] not in page.text
            assert len(page.json()["data"]) == (1 if path.endswith("sessions") else 0)


async def test_an_id_of_another_kind_finds_nothing(app: FastAPI, client: httpx.AsyncClient) -> None:
    # Ids are UUIDs across tables: an item's id is no file, key or session of anyone.
    owner = await World.make(app, client, "admin")
    item = await owner.item()
    for path in (
        f"/api/v1/files/{item['id']}",
        f"/api/v1/files/{item['id']}/content",
        f"/api/v1/api-keys/{item['id']}",
        f"/api/v1/auth/sessions/{item['id']}",
    ):
        method = "DELETE" if "api-keys" in path or "sessions" in path else "GET"
        response = await client.request(method, path, headers=owner.owner.headers)
        assert_error(response, 404, "NOT_FOUND")
