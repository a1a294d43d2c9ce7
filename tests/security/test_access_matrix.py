"""Function-level access control: every route x every kind of caller gets the status
API.md promises: 401 without a credential, 403 where the role (or an API key) is not
enough, the route's success where it is, never a 2xx where forbidden, never a 500.

- ASVS 5.0 V8.2.1 (function-level access restricted to explicit permissions), V8.3.1
  (enforced at the service, not by the client) and V8.1.1's documented rules: the table
  in tests/security/access.py is API.md's.
- OWASP API Security Top 10 2023 API5 (Broken Function Level Authorization) and API9
  (Improper Inventory Management: a route nobody listed fails the completeness test).
- API.md "API keys": a key acts as its owner, except where a password sign-in is
  required (403).

Every call is a valid request (a real body, real objects of the caller's own), so a
refusal can only come from the credential; the permitted calls prove it.
"""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.routing import Route

from keel.config import Settings
from tests.conftest import SettingsFactory
from tests.security.access import (
    CALLERS,
    EXPECTED,
    METRICS_TOKEN,
    World,
    expected_status,
    route_id,
)
from tests.security.support import NO_LIMITS
from tests.support.assertions import assert_error

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings(limit=NO_LIMITS, metrics={"token": METRICS_TOKEN})


def served_routes(app: FastAPI) -> set[tuple[str, str]]:
    """Every (method, path) the app answers, HEAD aside (the GET's twin)."""
    routes: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, APIWebSocketRoute):
            routes.add(("WS", route.path))
        elif isinstance(route, APIRoute | Route):
            routes.update(
                (method, route.path) for method in route.methods or () if method != "HEAD"
            )
        else:
            pytest.fail(f"a route of an unknown kind: {route!r}")
    return routes


async def test_every_route_has_an_expectation(app: FastAPI, client: httpx.AsyncClient) -> None:
    # The schema clients see, and the routes the app really serves (some are left out
    # of the schema): both must match the table exactly, no more, no less.
    schema = (await client.get("/openapi.json")).json()
    documented = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method in operations
    }
    listed = set(EXPECTED)
    assert documented - listed == set(), "routes without an access expectation"
    assert served_routes(app) - listed == set(), "served routes without an access expectation"
    assert listed - documented - served_routes(app) == set(), "expectations of no route"


HTTP_ROUTES = [key for key, rule in EXPECTED.items() if rule.policy != "websocket"]


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("route", HTTP_ROUTES, ids=route_id)
async def test_each_caller_gets_what_api_md_promises(
    app: FastAPI, client: httpx.AsyncClient, route: tuple[str, str], caller: str
) -> None:
    rule = EXPECTED[route]
    expected = expected_status(rule, caller)
    world = await World.make(app, client, caller)
    response = await world.request(*route)
    assert response.status_code < 500, response.text
    assert response.status_code == expected, (route, caller, response.text)
    if expected == 401:
        assert_error(response, 401, "UNAUTHORIZED")
        sent_credential = caller != "anonymous"
        challenge = (
            'Bearer error="invalid_token"'
            if sent_credential and rule.policy != "metrics"
            else "Bearer"
        )
        assert response.headers["www-authenticate"] == challenge
    elif expected == 403:
        assert_error(response, 403, "FORBIDDEN")


async def test_the_metrics_token_is_what_opens_metrics(
    client: httpx.AsyncClient,
) -> None:
    # The control for /metrics' row: the right token works; others never do.
    opened = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert opened.status_code == 200
    for wrong in (METRICS_TOKEN[:-1], METRICS_TOKEN + "x", METRICS_TOKEN.upper(), ""):
        refused = await client.get("/metrics", headers={"Authorization": f"Bearer {wrong}"})
        assert refused.status_code == 401


async def test_a_new_route_without_an_expectation_is_noticed(app: FastAPI) -> None:
    # The completeness test's own control: a route added to the app shows up.
    @app.get("/api/v1/forgotten")
    async def forgotten() -> dict[str, str]:
        return {}

    assert served_routes(app) - set(EXPECTED) == {("GET", "/api/v1/forgotten")}
