"""The access-control expectations of API.md, one entry per route, and a world to try
them in: callers of every kind, and an object of each resource for each path id.

Used by test_access_matrix.py (who may call what) and test_object_access.py (whose
objects a caller may touch). A route the app serves without an entry here fails
test_access_matrix.py's completeness test: a new route must say who may call it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from fastapi import FastAPI

from keel.models import OneTimePurpose, Role, User
from tests.auth.test_token import unverified_claims
from tests.factories.users import DEFAULT_PASSWORD, SignedIn, make_user, signed_in, unique_email
from tests.files.support import PNG
from tests.security.support import bearer, one_time_token

METRICS_TOKEN = "matrix-metrics-token-0123456789"
NEW_PASSWORD = "a brand new passphrase 42"

CALLERS = ("anonymous", "user", "moderator", "admin", "user_key", "admin_key")
CALLER_ROLES = {
    "anonymous": Role.USER,  # owns the objects the anonymous caller aims at
    "user": Role.USER,
    "moderator": Role.MODERATOR,
    "admin": Role.ADMIN,
    "user_key": Role.USER,
    "admin_key": Role.ADMIN,
}


@dataclass(frozen=True)
class Rule:
    """Who may call a route (API.md), and the status a permitted call gets.

    policy: `public` anyone; `any` any credential, API keys included; `password` a
    token from a password sign-in (an API key is 403); `staff` moderators and admins;
    `admin` admins only; `metrics` only the metrics token (no user credential);
    `websocket` checked by the realtime tests (tests/realtime), not over HTTP here.
    """

    policy: str
    ok: int


EXPECTED: dict[tuple[str, str], Rule] = {
    ("GET", "/health"): Rule("public", 200),
    ("GET", "/ready"): Rule("public", 200),
    ("GET", "/metrics"): Rule("metrics", 200),
    ("GET", "/openapi.json"): Rule("public", 200),
    ("GET", "/docs"): Rule("public", 200),
    ("GET", "/docs/oauth2-redirect"): Rule("public", 200),
    ("GET", "/.well-known/jwks.json"): Rule("public", 200),
    ("POST", "/api/v1/auth/register"): Rule("public", 201),
    ("POST", "/api/v1/auth/token"): Rule("public", 200),
    ("POST", "/api/v1/auth/logout"): Rule("public", 204),
    ("POST", "/api/v1/auth/logout-all"): Rule("password", 204),
    ("GET", "/api/v1/auth/sessions"): Rule("password", 200),
    ("DELETE", "/api/v1/auth/sessions/{session_id}"): Rule("password", 204),
    ("POST", "/api/v1/auth/verify-email"): Rule("public", 204),
    ("POST", "/api/v1/auth/verify-email/request"): Rule("password", 202),
    ("POST", "/api/v1/auth/forgot-password"): Rule("public", 202),
    ("POST", "/api/v1/auth/reset-password"): Rule("public", 204),
    ("GET", "/api/v1/users/me"): Rule("any", 200),
    ("PATCH", "/api/v1/users/me"): Rule("any", 200),
    ("DELETE", "/api/v1/users/me"): Rule("password", 204),
    ("POST", "/api/v1/users/me/password"): Rule("password", 204),
    ("GET", "/api/v1/users"): Rule("staff", 200),
    ("POST", "/api/v1/users"): Rule("admin", 201),
    ("GET", "/api/v1/users/{user_id}"): Rule("staff", 200),
    ("PATCH", "/api/v1/users/{user_id}"): Rule("admin", 200),
    ("DELETE", "/api/v1/users/{user_id}"): Rule("admin", 204),
    ("POST", "/api/v1/api-keys"): Rule("password", 201),
    ("GET", "/api/v1/api-keys"): Rule("password", 200),
    ("DELETE", "/api/v1/api-keys/{key_id}"): Rule("password", 204),
    ("GET", "/api/v1/items"): Rule("any", 200),
    ("POST", "/api/v1/items"): Rule("any", 201),
    ("GET", "/api/v1/items/export"): Rule("any", 200),
    ("GET", "/api/v1/items/{item_id}"): Rule("any", 200),
    ("PUT", "/api/v1/items/{item_id}"): Rule("any", 200),
    ("PATCH", "/api/v1/items/{item_id}"): Rule("any", 200),
    ("DELETE", "/api/v1/items/{item_id}"): Rule("any", 204),
    ("GET", "/api/v1/files"): Rule("any", 200),
    ("POST", "/api/v1/files"): Rule("any", 201),
    ("GET", "/api/v1/files/{file_id}"): Rule("any", 200),
    ("DELETE", "/api/v1/files/{file_id}"): Rule("any", 204),
    ("GET", "/api/v1/files/{file_id}/content"): Rule("any", 200),
    # The signed link is the credential (API.md: downloads without credentials).
    ("GET", "/api/v1/files/{file_id}/download"): Rule("public", 200),
    ("POST", "/api/v1/files/{file_id}/link"): Rule("any", 200),
    ("WS", "/api/v1/realtime"): Rule("websocket", 101),
}


def expected_status(rule: Rule, caller: str) -> int:
    if rule.policy == "public":
        return rule.ok
    if rule.policy == "metrics" or caller == "anonymous":
        return 401
    via_key = caller.endswith("_key")
    role = CALLER_ROLES[caller]
    allowed = {
        "any": True,
        "password": not via_key,
        "staff": role in (Role.MODERATOR, Role.ADMIN),
        "admin": role == Role.ADMIN,
    }[rule.policy]
    return rule.ok if allowed else 403


@dataclass
class World:
    """A caller, the account behind it (the owner of the objects the paths name), and
    the objects themselves, made through the API as a client would."""

    app: FastAPI
    client: httpx.AsyncClient
    caller: str
    owner: SignedIn
    headers: dict[str, str]
    made: dict[str, Any] = field(default_factory=dict)

    @classmethod
    async def make(cls, app: FastAPI, client: httpx.AsyncClient, caller: str) -> World:
        # Another admin, so that no admin caller is ever the last one (409).
        await make_user(app, role=Role.ADMIN)
        owner = await signed_in(app, client, CALLER_ROLES[caller])
        world = cls(app, client, caller, owner, {})
        if caller.endswith("_key"):
            world.headers = bearer((await world.api_key())["key"])
        elif caller != "anonymous":
            world.headers = owner.headers
        return world

    async def _created(self, response: httpx.Response) -> dict[str, Any]:
        assert response.status_code in (200, 201), response.text
        body: dict[str, Any] = response.json()
        return body

    async def api_key(self) -> dict[str, Any]:
        response = await self.client.post(
            "/api/v1/api-keys", json={"name": "matrix"}, headers=self.owner.headers
        )
        return await self._created(response)

    async def item(self) -> dict[str, Any]:
        response = await self.client.post(
            "/api/v1/items", json={"title": "owned"}, headers=self.owner.headers
        )
        return await self._created(response)

    async def file(self) -> dict[str, Any]:
        response = await self.client.post(
            "/api/v1/files",
            files={"file": ("owned.png", PNG, "image/png")},
            headers=self.owner.headers,
        )
        return await self._created(response)

    async def path_value(self, name: str) -> str:
        if name == "session_id":
            return str(unverified_claims(self.owner.access_token)["sid"])
        if name == "user_id":
            return str((await make_user(self.app)).id)
        maker = {"key_id": self.api_key, "item_id": self.item, "file_id": self.file}[name]
        created = await maker()
        self.made[name] = created
        return str(created["id"])

    async def url(self, path: str) -> str:
        while "{" in path:
            name = path[path.index("{") + 1 : path.index("}")]
            path = path.replace(f"{{{name}}}", await self.path_value(name))
        return path

    async def prepare(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        """The URL and arguments of the call a permitted client would make: a valid
        request in every respect but, for some callers, the credential. The objects
        it names exist once this returns."""
        url = await self.url(path)
        return url, await self._arguments(method, path, url)

    async def send(self, method: str, url: str, arguments: dict[str, Any]) -> httpx.Response:
        return await self.client.request(method, url, headers=self.headers, **arguments)

    async def request(self, method: str, path: str) -> httpx.Response:
        url, arguments = await self.prepare(method, path)
        return await self.send(method, url, arguments)

    async def _arguments(  # noqa: PLR0911, PLR0912 - one branch per route: a table
        self, method: str, path: str, url: str
    ) -> dict[str, Any]:
        key = (method, path)
        if key == ("GET", "/metrics"):
            return {}
        if key == ("POST", "/api/v1/auth/register"):
            return {"json": {"email": unique_email(), "password": DEFAULT_PASSWORD}}
        if key == ("POST", "/api/v1/auth/token"):
            user = await make_user(self.app)
            return {"data": {"username": user.email, "password": DEFAULT_PASSWORD}}
        if key == ("POST", "/api/v1/auth/logout"):
            other = await signed_in(self.app, self.client)
            return {"json": {"refresh_token": other.refresh_token}}
        if key == ("POST", "/api/v1/auth/verify-email"):
            user = await make_user(self.app, is_verified=False)
            return {"json": {"token": await self._token(user, OneTimePurpose.VERIFY_EMAIL)}}
        if key == ("POST", "/api/v1/auth/forgot-password"):
            return {"json": {"email": self.owner.user.email}}
        if key == ("POST", "/api/v1/auth/reset-password"):
            user = await make_user(self.app)
            token = await self._token(user, OneTimePurpose.RESET_PASSWORD)
            return {"json": {"token": token, "new_password": NEW_PASSWORD}}
        if key == ("PATCH", "/api/v1/users/me"):
            return {"json": {"full_name": "Matrix"}}
        if key == ("POST", "/api/v1/users/me/password"):
            return {"json": {"current_password": DEFAULT_PASSWORD, "new_password": NEW_PASSWORD}}
        if key == ("POST", "/api/v1/users"):
            return {"json": {"email": unique_email(), "password": DEFAULT_PASSWORD}}
        if key == ("PATCH", "/api/v1/users/{user_id}"):
            return {"json": {"full_name": "Changed by an admin"}}
        if key == ("POST", "/api/v1/api-keys"):
            return {"json": {"name": "another"}}
        if key in (("POST", "/api/v1/items"), ("PUT", "/api/v1/items/{item_id}")):
            return {"json": {"title": "matrix"}}
        if key == ("PATCH", "/api/v1/items/{item_id}"):
            return {"json": {"status": "active"}}
        if key == ("POST", "/api/v1/files"):
            return {"files": {"file": ("matrix.png", PNG, "image/png")}}
        if key == ("POST", "/api/v1/files/{file_id}/link"):
            return {"json": {"expires_in": 60}}
        if key == ("GET", "/api/v1/files/{file_id}/download"):
            link = await self.client.post(
                f"{url[: -len('/download')]}/link", headers=self.owner.headers
            )
            query = parse_qs(urlsplit((await self._created(link))["url"]).query)
            return {"params": {name: values[0] for name, values in query.items()}}
        return {}

    async def _token(self, user: User, purpose: OneTimePurpose) -> str:
        return await one_time_token(self.app, user, purpose)


def route_id(key: tuple[str, str]) -> str:
    return f"{key[0]} {key[1]}"


def unknown_id() -> str:
    return str(uuid.uuid4())
