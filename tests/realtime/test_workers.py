"""Two worker processes sharing Redis and the database, as several hosts would: a room
message and an item event cross from one worker to the other, and a client that
resumes on the other worker gets exactly what it missed, or a gap."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from websockets.asyncio.client import ClientConnection

from tests.realtime.support import Live, connected, quiet, receive, running, send, subscribe
from tests.support.servers import STARTUP_SECONDS, ws_connections_by_worker

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture(scope="module")
async def cluster(
    migrated_database: str,
    redis_url: str | None,
    redis_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[Live, Path]]:
    if not redis_url:
        pytest.skip("needs Redis: set KEEL_TEST_REDIS_URL")
    folder = tmp_path_factory.mktemp("workers")
    metrics = folder / "metrics"
    metrics.mkdir()
    async with running(
        folder,
        migrated_database,
        "--workers",
        "2",
        PROMETHEUS_MULTIPROC_DIR=str(metrics),
        KEEL_REDIS_URL=redis_url,
        KEEL_REDIS_KEY_PREFIX=f"{redis_prefix}workers:",
        KEEL_REALTIME_HISTORY_FRAMES="20",
        KEEL_REALTIME_PUBLISH_BURST="1000",
        KEEL_REALTIME_PUBLISH_PER_SECOND="1000",
    ) as live:
        yield live, metrics


@contextlib.asynccontextmanager
async def on_both_workers(
    live: Live, metrics: Path, token: str
) -> AsyncIterator[tuple[ClientConnection, ClientConnection]]:
    """Two authenticated connections of `token`, held by different worker processes
    (told apart by each worker's own keel_ws_connections)."""
    async with contextlib.AsyncExitStack() as stack:
        held: dict[int, ClientConnection] = {}
        deadline = time.monotonic() + STARTUP_SECONDS
        scratch = metrics.parent / "scratch"
        while len(held) < 2:
            if time.monotonic() > deadline:
                pytest.fail("connections never reached both workers")
            before = ws_connections_by_worker(metrics, scratch)
            ws = await stack.enter_async_context(connected(live.ws_url, token))
            await anyio.sleep(0.05)
            after = ws_connections_by_worker(metrics, scratch)
            grew = [pid for pid, count in after.items() if count > before.get(pid, 0.0)]
            if len(grew) == 1 and grew[0] not in held:
                held[grew[0]] = ws
        first, second = held.values()
        yield first, second


async def test_a_room_message_and_an_item_event_cross_workers(
    cluster: tuple[Live, Path],
) -> None:
    live, metrics = cluster
    owner_id, token = await live.user()
    async with on_both_workers(live, metrics, token) as (here, there):
        for ws in (here, there):
            await subscribe(ws, "room:cross")
            await subscribe(ws, "items")
        await send(here, {"type": "publish", "channel": "room:cross", "data": "hello"})
        from_here, from_there = await receive(here), await receive(there)
        assert from_here == from_there
        assert from_there["data"] == "hello"
        assert from_there["from"] == owner_id

        created = await live.admin.post(
            "/api/v1/items",
            json={"title": "crossing"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert created.status_code == 201
        for ws in (here, there):
            event = await receive(ws)
            assert event["event"] == "item.created"
            assert event["data"] == created.json()


async def test_resuming_on_the_other_worker_gets_exactly_what_was_missed(
    cluster: tuple[Live, Path],
) -> None:
    live, metrics = cluster
    _user_id, token = await live.user()
    async with on_both_workers(live, metrics, token) as (reader, writer):
        await subscribe(reader, "room:resume")
        await subscribe(writer, "room:resume")
        await send(writer, {"type": "publish", "channel": "room:resume", "data": 0})
        last_seen = (await receive(reader))["seq"]
        await receive(writer)
        await reader.close()  # the reader goes away...
        seqs = []
        for value in range(1, 6):  # ...and misses these, published through the other worker
            await send(writer, {"type": "publish", "channel": "room:resume", "data": value})
            seqs.append((await receive(writer))["seq"])
        # It comes back, on whichever worker; here on the writer's, as a new connection.
        async with on_both_workers(live, metrics, token) as (back, _other):
            await subscribe(back, "room:resume", since=last_seen)
            replayed = [await receive(back) for _ in range(5)]
            assert [frame["data"] for frame in replayed] == [1, 2, 3, 4, 5]
            assert [frame["seq"] for frame in replayed] == seqs
            await quiet(back)
            await send(writer, {"type": "publish", "channel": "room:resume", "data": 6})
            assert (await receive(back))["data"] == 6


async def test_resuming_from_a_seq_older_than_what_is_kept_is_a_gap(
    cluster: tuple[Live, Path],
) -> None:
    live, metrics = cluster
    _user_id, token = await live.user()
    async with on_both_workers(live, metrics, token) as (reader, writer):
        await subscribe(writer, "room:old")
        await send(writer, {"type": "publish", "channel": "room:old", "data": 0})
        oldest = (await receive(writer))["seq"]
        for value in range(1, 150):  # 20 are kept; Redis trims ~100 at a time
            await send(writer, {"type": "publish", "channel": "room:old", "data": value})
            await receive(writer)
        await subscribe(reader, "room:old", since=oldest)
        assert await receive(reader) == {"type": "gap", "channel": "room:old"}
