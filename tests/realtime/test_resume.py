"""Resuming after a reconnect, on one worker (the in-process broker on the embedded run,
Redis when the suite has it): what was missed arrives in order, none twice, then the
live frames; a `since` older than what is kept, or unknown, is a `gap`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.realtime.support import Live, connected, quiet, receive, running, send, subscribe

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture(scope="module")
async def live(
    migrated_database: str,
    redis_url: str | None,
    redis_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Live]:
    redis = (
        {"KEEL_REDIS_URL": redis_url, "KEEL_REDIS_KEY_PREFIX": f"{redis_prefix}resume:"}
        if redis_url
        else {}
    )
    async with running(
        tmp_path_factory.mktemp("resume"),
        migrated_database,
        KEEL_REALTIME_HISTORY_FRAMES="20",
        KEEL_REALTIME_PUBLISH_BURST="1000",
        KEEL_REALTIME_PUBLISH_PER_SECOND="100",
        **redis,
    ) as server:
        yield server


async def _publish(live: Live, token: str, room: str, values: range) -> list[str]:
    """Publish each value from a connection of its own; the seqs, in order."""
    seqs = []
    async with connected(live.ws_url, token) as ws:
        await subscribe(ws, room)
        for value in values:
            await send(ws, {"type": "publish", "channel": room, "data": value})
            message = await receive(ws)
            assert message["data"] == value
            seqs.append(message["seq"])
    return seqs


async def test_a_client_that_resumes_gets_exactly_what_it_missed(live: Live) -> None:
    _reader_id, reader = await live.user()
    _writer_id, writer = await live.user()
    async with connected(live.ws_url, reader) as ws:
        await subscribe(ws, "room:resume")
        seen = await _publish(live, writer, "room:resume", range(3))
        got = [await receive(ws) for _ in range(3)]
        assert [frame["seq"] for frame in got] == seen
    # Disconnected: these are missed.
    missed = await _publish(live, writer, "room:resume", range(3, 8))
    async with connected(live.ws_url, reader) as ws:
        await subscribe(ws, "room:resume", since=seen[-1])
        replayed = [await receive(ws) for _ in range(5)]
        assert [frame["data"] for frame in replayed] == [3, 4, 5, 6, 7]
        assert [frame["seq"] for frame in replayed] == missed
        assert all(frame["type"] == "message" for frame in replayed)
        await quiet(ws)  # none twice
        live_too = await _publish(live, writer, "room:resume", range(8, 9))
        assert (await receive(ws))["seq"] == live_too[0]


async def test_resuming_from_the_newest_seq_replays_nothing(live: Live) -> None:
    _reader_id, reader = await live.user()
    seqs = await _publish(live, reader, "room:newest", range(2))
    async with connected(live.ws_url, reader) as ws:
        await subscribe(ws, "room:newest", since=seqs[-1])
        await quiet(ws)


@pytest.mark.parametrize("since", ["garbage", "1-0", "99999999999999-0"])
async def test_an_unknown_since_is_a_gap_then_live(live: Live, since: str) -> None:
    _reader_id, reader = await live.user()
    await _publish(live, reader, "room:gaps", range(2))
    async with connected(live.ws_url, reader) as ws:
        await subscribe(ws, "room:gaps", since=since)
        assert await receive(ws) == {"type": "gap", "channel": "room:gaps"}
        seqs = await _publish(live, reader, "room:gaps", range(2, 3))
        assert (await receive(ws))["seq"] == seqs[0]


async def test_a_since_older_than_what_is_kept_is_a_gap(live: Live) -> None:
    _reader_id, reader = await live.user()
    oldest = (await _publish(live, reader, "room:kept", range(1)))[0]
    # 20 frames are kept here (KEEL_REALTIME_HISTORY_FRAMES): the first is gone after 150
    # (Redis trims whole nodes of ~100 entries at a time).
    await _publish(live, reader, "room:kept", range(1, 150))
    async with connected(live.ws_url, reader) as ws:
        await subscribe(ws, "room:kept", since=oldest)
        assert await receive(ws) == {"type": "gap", "channel": "room:kept"}


async def test_items_events_resume_and_stay_private(live: Live) -> None:
    _owner_id, owner = await live.user()
    _other_id, other = await live.user()
    headers = {"Authorization": f"Bearer {owner}"}
    async with connected(live.ws_url, owner) as ws:
        await subscribe(ws, "items")
        first = await live.admin.post("/api/v1/items", json={"title": "a"}, headers=headers)
        assert first.status_code == 201
        last_seen = (await receive(ws))["seq"]
    await live.admin.post(
        "/api/v1/items", json={"title": "not mine"}, headers={"Authorization": f"Bearer {other}"}
    )
    second = await live.admin.post("/api/v1/items", json={"title": "b"}, headers=headers)
    async with connected(live.ws_url, owner) as ws:
        await subscribe(ws, "items", since=last_seen)
        replayed = await receive(ws)
        assert replayed["event"] == "item.created"
        assert replayed["data"]["id"] == second.json()["id"]
        await quiet(ws)  # the other user's item is not replayed to this one
