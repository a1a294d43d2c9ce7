"""Racing writers: If-Match lets exactly one win; without it none is lost either."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI

from tests.factories.users import signed_in
from tests.items.test_items import create, url

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("method", ["PATCH", "PUT", "DELETE"])
async def test_racing_writers_with_one_if_match_give_one_success_and_412s(
    app: FastAPI, client: httpx.AsyncClient, method: str
) -> None:
    me = await signed_in(app, client)
    item = await create(client, me)
    headers = {**me.headers, "If-Match": '"1"'}
    body = None if method == "DELETE" else {"title": "mine"}
    responses = await asyncio.gather(
        *(client.request(method, url(item["id"]), json=body, headers=headers) for _ in range(6))
    )
    statuses = sorted(response.status_code for response in responses)
    # The losers of a delete find the item gone: 404, as for any item that is not there.
    won, lost = (204, 404) if method == "DELETE" else (200, 412)
    assert statuses == sorted([won] + [lost] * 5), [r.text for r in responses]
    current = await client.get(url(item["id"]), headers=me.headers)
    if method == "DELETE":
        assert current.status_code == 404
    else:
        assert current.json()["version"] == 2


async def test_racing_writers_without_if_match_each_add_one_version(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    me = await signed_in(app, client)
    item = await create(client, me)
    writers = 8
    responses = await asyncio.gather(
        *(
            client.patch(url(item["id"]), json={"title": f"writer {n}"}, headers=me.headers)
            for n in range(writers)
        )
    )
    assert all(response.status_code == 200 for response in responses)
    versions = sorted(response.json()["version"] for response in responses)
    # No lost update: every write got its own version, and the last one stands.
    assert versions == list(range(2, 2 + writers))
    final = (await client.get(url(item["id"]), headers=me.headers)).json()
    assert final["version"] == 1 + writers
    last = next(r.json() for r in responses if r.json()["version"] == final["version"])
    assert final["title"] == last["title"]
