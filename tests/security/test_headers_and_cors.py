"""Security headers on every answer, errors and streams included, and CORS that lets
no look-alike origin in.

- ASVS 5.0 V3.4.1 (HSTS over HTTPS, a year, subdomains), V3.4.3 and V3.4.6 (a CSP with
  `default-src 'none'`, `base-uri 'none'`, `frame-ancestors 'none'`), V3.4.4
  (`X-Content-Type-Options: nosniff` on all responses), V3.4.5 (Referrer-Policy),
  V3.4.8 (COOP), V3.4.2 (CORS origins only from an allow-list).
- OWASP API Security Top 10 2023 API8 (Security Misconfiguration).
- What SecurityHeadersMiddleware promises (keel/core/middleware/security_headers.py)
  and API.md (`X-Request-ID` on every response; CORS only for `KEEL_CORS_ORIGINS`).

tests/core/test_middleware.py checks the headers on /health and one 404, and CORS for
one listed and one foreign origin; here every kind of answer, and look-alike origins.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from keel.main import create_app
from tests.conftest import SettingsFactory
from tests.files.support import PNG
from tests.security.access import World
from tests.security.support import bearer
from tests.support import probe_routes
from tests.support.apps import client_for

pytestmark = pytest.mark.anyio

PROMISED = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "content-security-policy": (
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}
ALLOWED_ORIGIN = "https://app.example"


@pytest.fixture
async def https_client(
    make_settings: SettingsFactory, migrated_database: str
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = make_settings(
        cors={"origins": [ALLOWED_ORIGIN], "allow_credentials": True},
        limit={"token_account": "1/minute"},
        max_upload_bytes=4096,
    )
    app = create_app(settings)
    async with client_for(app, base_url="https://testserver") as client:
        yield app, client


# File bytes carry their own, stricter policy (keel/core/downloads.py): nothing runs.
DOWNLOAD_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"


def assert_promised_headers(response: httpx.Response, what: str) -> None:
    for name, promised in PROMISED.items():
        expected = (
            DOWNLOAD_CSP
            if name == "content-security-policy" and what.startswith("download")
            else promised
        )
        assert response.headers.get(name) == expected, (what, name, response.headers)
    hsts = response.headers.get("strict-transport-security", "")
    max_age = int(hsts.split("max-age=")[1].split(";")[0]) if "max-age=" in hsts else 0
    assert max_age >= 365 * 24 * 3600, (what, hsts)
    assert "includeSubDomains" in hsts, (what, hsts)
    assert response.headers.get("x-request-id"), what


async def test_every_kind_of_answer_carries_the_security_headers(
    https_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, client = https_client
    world = await World.make(app, client, "user")
    item = await world.item()
    file = await world.file()
    headers = world.headers
    big = b'{"title": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    cases: list[tuple[str, httpx.Response]] = [
        ("200 json", await client.get("/api/v1/users/me", headers=headers)),
        ("201", await client.post("/api/v1/items", json={"title": "t"}, headers=headers)),
        ("204", await client.delete(f"/api/v1/items/{item['id']}", headers=headers)),
        ("200 stream", await client.get("/api/v1/items/export?format=csv", headers=headers)),
        ("download 200", await client.get(f"/api/v1/files/{file['id']}/content", headers=headers)),
        (
            "download 206",
            await client.get(
                f"/api/v1/files/{file['id']}/content", headers={**headers, "Range": "bytes=0-3"}
            ),
        ),
        (
            "416",
            await client.get(
                f"/api/v1/files/{file['id']}/content", headers={**headers, "Range": "bytes=99999-"}
            ),
        ),
        (
            "304",
            await client.get(
                f"/api/v1/files/{file['id']}/content",
                headers={**headers, "If-None-Match": f'"{file["sha256"]}"'},
            ),
        ),
        ("health fast path", await client.get("/health")),
        ("jwks", await client.get("/.well-known/jwks.json")),
        ("401", await client.get("/api/v1/users/me")),
        ("401 bad token", await client.get("/api/v1/users/me", headers=bearer("x.y.z"))),
        ("403", await client.get("/api/v1/users", headers=headers)),
        ("404", await client.get("/nowhere")),
        ("405", await client.put("/health")),
        (
            "413 json",
            await client.post(
                "/api/v1/items",
                content=big,
                headers={**headers, "content-type": "application/json"},
            ),
        ),
        (
            "413 upload",
            await client.post(
                "/api/v1/files", files={"file": ("a.png", PNG * 8, "image/png")}, headers=headers
            ),
        ),
        (
            "415",
            await client.post(
                "/api/v1/items", content=b"x", headers={**headers, "content-type": "text/plain"}
            ),
        ),
        ("422", await client.post("/api/v1/items", json={}, headers=headers)),
        (
            "400 oauth",
            await client.post("/api/v1/auth/token", data={"username": "a@b.io", "password": "no"}),
        ),
        (
            "429",
            await client.post("/api/v1/auth/token", data={"username": "a@b.io", "password": "no"}),
        ),
        (
            "cors preflight",
            await client.options(
                "/api/v1/items",
                headers={"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST"},
            ),
        ),
        (
            "cors refused",
            await client.options(
                "/api/v1/items",
                headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
            ),
        ),
    ]
    statuses = {what: response.status_code for what, response in cases}
    assert statuses["429"] == 429, statuses
    assert statuses["413 upload"] == 413, statuses
    for what, response in cases:
        assert_promised_headers(response, what)


async def test_a_crash_carries_them_too(
    make_settings: SettingsFactory, migrated_database: str
) -> None:
    app = create_app(make_settings())
    app.include_router(probe_routes.router)
    async with client_for(app, base_url="https://testserver", raise_app_exceptions=False) as client:
        response = await client.get("/probe/crash")
    assert response.status_code == 500
    assert_promised_headers(response, "500")
    assert "hunter2" not in response.text
    assert "/srv/keel" not in response.text


LOOK_ALIKES = [
    "https://app.example.evil",
    "https://evil-app.example",
    "https://app.example.evil.example",
    "https://sub.app.example",
    "https://evilapp.example",
    "http://app.example",
    "https://app.example:8443",
    "https://app.example:443.evil",
    "https://app.example.",
    "https://app.examplE",
    "null",
    "file://",
    "https://app.example%60.evil",
    "https://app.example@evil.example",
    "https://app.example/",
    "*",
    "",
]


@pytest.mark.parametrize("origin", LOOK_ALIKES)
async def test_look_alike_origins_are_refused(
    https_client: tuple[FastAPI, httpx.AsyncClient], origin: str
) -> None:
    app, client = https_client
    world = await World.make(app, client, "user")
    simple = await client.get("/api/v1/users/me", headers={**world.headers, "Origin": origin})
    assert simple.status_code == 200
    # Without Allow-Origin a browser shows the answer to no script of that origin, and
    # the origin learns nothing of the policy either (no credentials or exposed headers).
    assert "access-control-allow-origin" not in simple.headers, origin
    assert "access-control-allow-credentials" not in simple.headers, origin
    assert "access-control-expose-headers" not in simple.headers, origin
    assert "origin" in simple.headers["vary"].lower()
    preflight = await client.options(
        "/api/v1/users/me",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        },
    )
    assert preflight.status_code == 400, preflight.text
    assert preflight.json()["error"]["code"] == "BAD_REQUEST"
    assert "access-control-allow-origin" not in preflight.headers, origin


async def test_the_listed_origin_is_allowed_and_echoed_exactly(
    https_client: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    # The control for the look-alikes: the listed origin itself gets through.
    app, client = https_client
    world = await World.make(app, client, "user")
    simple = await client.get(
        "/api/v1/users/me", headers={**world.headers, "Origin": ALLOWED_ORIGIN}
    )
    assert simple.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert simple.headers["access-control-allow-credentials"] == "true"
    assert "origin" in simple.headers["vary"].lower()
    preflight = await client.options(
        "/api/v1/users/me",
        headers={"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "PATCH"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
