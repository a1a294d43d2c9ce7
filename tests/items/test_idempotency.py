"""Idempotency-Key on POST /items: replay, mismatch, in flight, per caller, expiry."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update

from keel.core.jobs.inprocess import InProcessRunner
from keel.idempotency import IN_FLIGHT_TIMEOUT, claim, purge_expired_records, request_hash
from keel.items import events
from keel.models import IdempotencyRecord, Item
from keel.models.base import utcnow
from tests.factories.users import SignedIn, signed_in
from tests.items.test_items import ITEMS, detail_locs
from tests.support.assertions import assert_error

pytestmark = pytest.mark.anyio

SCOPE = "POST /api/v1/items"


async def post(
    client: httpx.AsyncClient, who: SignedIn, key: str, body: dict[str, Any]
) -> httpx.Response:
    return await client.post(ITEMS, json=body, headers={**who.headers, "Idempotency-Key": key})


async def count_items(app: FastAPI) -> int:
    async with app.state.resources.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(Item)) or 0)


async def count_records(app: FastAPI) -> int:
    async with app.state.resources.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(IdempotencyRecord)) or 0)


async def test_a_retry_replays_the_first_response(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    first = await post(client, me, "order-1", {"title": "Once", "tags": ["a"]})
    assert first.status_code == 201, first.text
    # The same body, its keys in another order and spaced differently.
    again = await client.post(
        ITEMS,
        content=b'{ "tags": ["a"],  "title": "Once" }',
        headers={**me.headers, "Idempotency-Key": "order-1", "Content-Type": "application/json"},
    )
    assert again.status_code == 201
    assert again.content == first.content
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["etag"] == first.headers["etag"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await count_items(app) == 1


async def test_the_same_key_with_another_body_is_422(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    assert (await post(client, me, "k", {"title": "first"})).status_code == 201
    response = await post(client, me, "k", {"title": "second"})
    assert_error(response, 422, "IDEMPOTENCY_KEY_REUSED")
    assert await count_items(app) == 1


async def test_a_key_still_in_flight_is_409(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    body = {"title": "slow"}
    # The first request has claimed the key and not finished.
    state = await claim(
        app.state.resources.database,
        me.user.id,
        SCOPE,
        "busy",
        request_hash(httpx.Request("POST", "/", json=body).content),
    )
    assert state.record_id is not None
    response = await post(client, me, "busy", body)
    assert_error(response, 409, "CONFLICT")
    # Another body is a client error whatever the state.
    assert_error(await post(client, me, "busy", {"title": "other"}), 422, "IDEMPOTENCY_KEY_REUSED")
    assert await count_items(app) == 0


async def test_a_claim_left_by_a_dead_request_is_taken_over(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    body = {"title": "retried"}
    await claim(
        app.state.resources.database,
        me.user.id,
        SCOPE,
        "orphan",
        request_hash(httpx.Request("POST", "/", json=body).content),
    )
    async with app.state.resources.sessionmaker() as session:
        await session.execute(
            update(IdempotencyRecord).values(
                created_at=utcnow() - IN_FLIGHT_TIMEOUT - timedelta(seconds=1)
            )
        )
        await session.commit()
    response = await post(client, me, "orphan", body)
    assert response.status_code == 201, response.text
    assert await count_items(app) == 1


async def test_keys_are_per_caller(app: FastAPI, client: httpx.AsyncClient) -> None:
    ann = await signed_in(app, client)
    bob = await signed_in(app, client)
    body = {"title": "same"}
    first = await post(client, ann, "shared", body)
    second = await post(client, bob, "shared", body)
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]
    assert second.json()["owner_id"] == str(bob.user.id)
    assert "idempotent-replayed" not in second.headers


async def test_a_failed_request_frees_its_key(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    assert ["body", "title"] in detail_locs(await post(client, me, "fix-me", {"title": ""}))
    # Only successes are kept: the corrected request runs, not a replay of the 422.
    fixed = await post(client, me, "fix-me", {"title": "fixed"})
    assert fixed.status_code == 201, fixed.text
    assert await count_records(app) == 1


async def test_a_request_failing_after_its_insert_frees_its_key(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    me = await signed_in(app, client)

    def fail(*_args: object) -> None:
        raise RuntimeError("injected after the insert")

    monkeypatch.setattr(events, "publish_after_commit", fail)
    failed = await post(client, me, "after-insert", {"title": "x"})
    assert_error(failed, 500, "INTERNAL_ERROR")
    monkeypatch.undo()
    assert await count_items(app) == 0
    retried = await post(client, me, "after-insert", {"title": "x"})
    assert retried.status_code == 201, retried.text
    assert "idempotent-replayed" not in retried.headers
    assert await count_items(app) == 1


@pytest.mark.parametrize("key", ["", "with space", "é", "x" * 256, "tab\there"])
async def test_a_malformed_key_is_422(app: FastAPI, client: httpx.AsyncClient, key: str) -> None:
    me = await signed_in(app, client)
    response = await client.post(
        ITEMS,
        json={"title": "x"},
        headers=[
            *((name.encode(), value.encode()) for name, value in me.headers.items()),
            (b"Idempotency-Key", key.encode("utf-8")),
        ],
    )
    assert ["header", "Idempotency-Key"] in detail_locs(response)
    assert await count_items(app) == 0


async def test_the_longest_visible_key_is_fine(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    key = "".join(chr(c) for c in range(0x21, 0x7F)) * 3  # 282 visible characters
    assert (await post(client, me, key[:255], {"title": "x"})).status_code == 201


async def test_records_expire_after_a_day_and_are_purged(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    body = {"title": "daily"}
    assert (await post(client, me, "daily", body)).status_code == 201
    async with app.state.resources.sessionmaker() as session:
        await session.execute(
            update(IdempotencyRecord).values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
    # Expired: the key is new again.
    again = await post(client, me, "daily", body)
    assert again.status_code == 201
    assert "idempotent-replayed" not in again.headers
    assert await count_items(app) == 2

    async with app.state.resources.sessionmaker() as session:
        await session.execute(
            update(IdempotencyRecord).values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
    await post(client, me, "fresh", body)
    runner = app.state.resources.jobs
    assert isinstance(runner, InProcessRunner)
    await runner.enqueue(purge_expired_records.call())
    await runner.join()
    async with app.state.resources.sessionmaker() as session:
        keys = list(await session.scalars(select(IdempotencyRecord.key)))
    assert keys == ["fresh"]
