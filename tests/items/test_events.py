"""Each committed change to an item is published on the `items` channel; nothing else is."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from keel.auth.deps import Principal
from keel.core.broker import Broker, Frame, Outbox
from keel.items import service
from keel.items.schemas import ItemWrite
from tests.factories.users import signed_in
from tests.items.test_items import ITEMS, create, url

pytestmark = pytest.mark.anyio


async def next_event(events: Outbox) -> dict[str, Any]:
    frame = await asyncio.wait_for(events.get(), timeout=5)
    assert isinstance(frame, Frame)
    return dict(json.loads(frame.payload))


async def assert_quiet(events: Outbox) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(events.get(), timeout=0.2)


@contextlib.asynccontextmanager
async def watching(broker: Broker) -> AsyncIterator[Outbox]:
    """The `items` channel's frames from now on, as a realtime connection gets them."""
    events = Outbox()
    async with broker.subscribe("items", events) as (subscription, _resume):
        subscription.release()
        yield events


async def test_create_update_delete_are_published_in_order(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    async with watching(app.state.resources.broker) as events:
        item = await create(client, me, title="first")
        patched = (
            await client.patch(url(item["id"]), json={"title": "second"}, headers=me.headers)
        ).json()
        deleted = await client.delete(url(item["id"]), headers=me.headers)
        assert deleted.status_code == 204

        created = await next_event(events)
        assert created == {"event": "item.created", "data": item}
        updated = await next_event(events)
        assert updated == {"event": "item.updated", "data": patched}
        gone = await next_event(events)
        assert gone == {"event": "item.deleted", "data": patched}
        await assert_quiet(events)


async def test_refused_changes_publish_nothing(app: FastAPI, client: httpx.AsyncClient) -> None:
    me = await signed_in(app, client)
    item = await create(client, me)
    async with watching(app.state.resources.broker) as events:
        stale = await client.patch(
            url(item["id"]), json={"title": "x"}, headers={**me.headers, "If-Match": '"9"'}
        )
        assert stale.status_code == 412
        invalid = await client.post(ITEMS, json={"title": ""}, headers=me.headers)
        assert invalid.status_code == 422
        await assert_quiet(events)


async def test_a_rolled_back_change_publishes_nothing(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    resources = app.state.resources
    async with watching(resources.broker) as events:
        db = resources.database.unit(write=True)
        await service.create(
            db, resources.broker, Principal(me.user.id, me.user.role), ItemWrite(title="never")
        )
        await db.rollback()
        await assert_quiet(events)
