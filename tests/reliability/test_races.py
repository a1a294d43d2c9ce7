"""Races between two worker processes (`keel serve --workers 2`) on PostgreSQL (a
cluster of the module's own, with a Redis of its own, so these run on every test run):
registration, If-Match, Idempotency-Key and refresh-token rotation each let exactly one
of many simultaneous requests win.

Each request goes on a connection of its own, so the kernel spreads them over both
workers; the database's constraints and conditional statements decide, not a process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import pytest

from tests.realtime.support import ADMIN_EMAIL, PASSWORD, Live, running_within
from tests.reliability.conftest import FAST_FAILING
from tests.support.redis_server import OwnRedis

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

RACERS = 12


@pytest.fixture(scope="module")
async def live(
    cluster_database: str, own_redis: OwnRedis, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Live]:
    folder: Path = tmp_path_factory.mktemp("races")
    # Each worker imports the app; under coverage that took about 20 s on a busy machine.
    async with running_within(
        60,
        folder,
        cluster_database,
        "--workers",
        "2",
        KEEL_REDIS_URL=own_redis.url,
        KEEL_LIMIT_REGISTER_IP="1000/hour",
        KEEL_LIMIT_TOKEN_IP="1000/minute",
        KEEL_LIMIT_TOKEN_ACCOUNT="1000/minute",
        **FAST_FAILING,
    ) as server:
        yield server


async def race(
    live: Live, request: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]
) -> list[httpx.Response]:
    """`RACERS` copies of `request` at once, each on a new connection."""
    answers: list[httpx.Response] = []
    gate = anyio.Event()

    async def one() -> None:
        async with httpx.AsyncClient(base_url=live.server.url, timeout=30) as client:
            await client.get("/health")  # connected before the gate opens
            await gate.wait()
            answers.append(await request(client))

    async with anyio.create_task_group() as group:
        for _ in range(RACERS):
            group.start_soon(one)
        await anyio.sleep(0.5)
        gate.set()
    assert all(answer.status_code != 500 for answer in answers), [a.text for a in answers]
    return answers


def statuses(answers: list[httpx.Response]) -> list[int]:
    return sorted(answer.status_code for answer in answers)


async def test_registration_of_one_email_succeeds_once(live: Live) -> None:
    answers = await race(
        live,
        lambda client: client.post(
            "/api/v1/auth/register", json={"email": "Racer@Example.com", "password": PASSWORD}
        ),
    )
    assert statuses(answers) == [201] + [409] * (RACERS - 1)


async def test_if_match_lets_one_change_through(live: Live) -> None:
    created = await live.admin.post("/api/v1/items", json={"title": "contested"})
    assert created.status_code == 201, created.text
    item = created.json()
    headers = {**live.admin.headers, "If-Match": '"1"'}
    answers = await race(
        live,
        lambda client: client.patch(
            f"/api/v1/items/{item['id']}", json={"title": "mine"}, headers=headers
        ),
    )
    assert statuses(answers) == [200] + [412] * (RACERS - 1)
    final = await live.admin.get(f"/api/v1/items/{item['id']}")
    assert final.json()["version"] == 2


async def test_one_idempotency_key_creates_one_item(live: Live) -> None:
    headers = {**live.admin.headers, "Idempotency-Key": "race-key-1"}
    answers = await race(
        live,
        lambda client: client.post("/api/v1/items", json={"title": "once"}, headers=headers),
    )
    created = [answer for answer in answers if answer.status_code == 201]
    assert created, statuses(answers)
    assert {answer.status_code for answer in answers} <= {201, 409}, statuses(answers)
    # Whoever got a 201 got the same item (the first, or its replay).
    assert len({answer.json()["id"] for answer in created}) == 1
    listed = await live.admin.get("/api/v1/items", params={"q": "once", "include_total": "true"})
    assert listed.json()["total"] == 1


async def test_a_refresh_token_is_spent_once(live: Live) -> None:
    pair = await live.admin.post(
        "/api/v1/auth/token", data={"username": ADMIN_EMAIL, "password": PASSWORD}
    )
    assert pair.status_code == 200, pair.text
    refresh = pair.json()["refresh_token"]
    answers = await race(
        live,
        lambda client: client.post(
            "/api/v1/auth/token",
            data={"grant_type": "refresh_token", "refresh_token": refresh},
        ),
    )
    assert statuses(answers) == [200] + [400] * (RACERS - 1)
    assert {answer.json()["error"] for answer in answers if answer.status_code == 400} == {
        "invalid_grant"
    }
