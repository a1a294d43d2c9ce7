"""The realtime protocol of API.md, against a real `keel serve`, with the `websockets`
package as the client: authentication, channels, rooms, errors, close codes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.realtime.support import (
    Live,
    connected,
    quiet,
    receive,
    running,
    send,
    subscribe,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture(scope="module")
async def live(
    migrated_database: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Live]:
    folder = tmp_path_factory.mktemp("realtime")
    async with running(
        folder,
        migrated_database,
        KEEL_REALTIME_AUTH_TIMEOUT_SECONDS="1",
        KEEL_REALTIME_PUBLISH_BURST="5",
        KEEL_REALTIME_PUBLISH_PER_SECOND="1",
        KEEL_CORS_ORIGINS='["https://app.example"]',
    ) as server:
        yield server


async def _closed_with(ws: ClientConnection, code: int, within: float = 5) -> None:
    """The server closes the connection with `code` within `within` seconds (frames
    sent before the close are read and dropped)."""
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(_drain(ws), within)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == code, closed.value.rcvd


async def _drain(ws: ClientConnection) -> None:
    while True:
        await ws.recv()


async def test_auth_by_frame_answers_ready(live: Live) -> None:
    user_id, token = await live.user()
    async with connect(live.ws_url) as ws:
        await send(ws, {"type": "auth", "token": token})
        assert await receive(ws) == {"type": "ready", "user_id": user_id}
        await send(ws, {"type": "ping"})
        assert await receive(ws) == {"type": "pong"}


async def test_auth_by_header_answers_ready(live: Live) -> None:
    user_id, token = await live.user()
    async with connect(live.ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        assert await receive(ws) == {"type": "ready", "user_id": user_id}


async def test_a_bad_header_or_a_foreign_origin_is_403(live: Live) -> None:
    _user_id, token = await live.user()
    with pytest.raises(InvalidStatus) as bad:
        async with connect(live.ws_url, additional_headers={"Authorization": "Bearer nope"}):
            pass
    assert bad.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as foreign:
        async with connect(live.ws_url, origin="https://evil.example"):  # type: ignore[arg-type]
            pass
    assert foreign.value.response.status_code == 403
    async with connected(live.ws_url, token, origin="https://app.example") as ws:
        await send(ws, {"type": "ping"})
        assert await receive(ws) == {"type": "pong"}


async def test_bad_credentials_in_the_first_frame_close_4401(live: Live) -> None:
    async with connect(live.ws_url) as ws:
        await send(ws, {"type": "auth", "token": "not-a-token"})
        await _closed_with(ws, 4401)
    async with connect(live.ws_url) as ws:
        await send(ws, {"type": "ping"})  # anything but auth first
        await _closed_with(ws, 4401)


async def test_no_auth_in_time_closes_4408(live: Live) -> None:
    async with connect(live.ws_url) as ws:
        await _closed_with(ws, 4408)


async def test_a_frame_that_is_not_json_closes_1008(live: Live) -> None:
    _user_id, token = await live.user()
    async with connected(live.ws_url, token) as ws:
        await ws.send("{not json")
        await _closed_with(ws, 1008)


async def test_a_frame_over_64_kib_closes_1009(live: Live) -> None:
    _user_id, token = await live.user()
    async with connected(live.ws_url, token) as ws:
        await ws.send('{"type": "ping", "pad": "' + "x" * (64 * 1024) + '"}')
        await _closed_with(ws, 1009)


async def test_recoverable_mistakes_are_error_frames_and_the_connection_stays(live: Live) -> None:
    _user_id, token = await live.user()
    async with connected(live.ws_url, token) as ws:
        cases = [
            ({"type": "subscribe", "channel": "nope"}, "UNKNOWN_CHANNEL"),
            ({"type": "subscribe", "channel": "room:UPPER"}, "UNKNOWN_CHANNEL"),
            ({"type": "publish", "channel": "room:never-joined", "data": 1}, "NOT_SUBSCRIBED"),
            ({"type": "publish", "channel": "items", "data": 1}, "FORBIDDEN"),
            ({"type": "unsubscribe", "channel": "room:x"}, "NOT_SUBSCRIBED"),
            ({"type": "subscribe"}, "VALIDATION_ERROR"),
            ({"type": "dance"}, "VALIDATION_ERROR"),
            ({"type": "ping", "extra": 1}, "VALIDATION_ERROR"),
            ([1, 2], "VALIDATION_ERROR"),
        ]
        for frame, code in cases:
            await send(ws, frame)  # type: ignore[arg-type]
            answer = await receive(ws)
            assert answer["type"] == "error", (frame, answer)
            assert answer["code"] == code, (frame, answer)
            assert answer["message"]
        await send(ws, {"type": "ping"})
        assert await receive(ws) == {"type": "pong"}


async def test_rooms_deliver_to_every_subscriber_the_publisher_included(live: Live) -> None:
    alice_id, alice = await live.user()
    _bob_id, bob = await live.user()
    _carol_id, carol = await live.user()
    async with (
        connected(live.ws_url, alice) as a,
        connected(live.ws_url, bob) as b,
        connected(live.ws_url, carol) as c,
    ):
        await subscribe(a, "room:lobby")
        await subscribe(b, "room:lobby")
        await subscribe(c, "room:other")
        await send(
            a, {"type": "publish", "channel": "room:lobby", "data": {"text": "hi", "n": [1]}}
        )
        got_a, got_b = await receive(a), await receive(b)
        assert got_a == got_b
        assert got_a["type"] == "message"
        assert got_a["channel"] == "room:lobby"
        assert got_a["from"] == alice_id
        assert got_a["data"] == {"text": "hi", "n": [1]}
        assert got_a["seq"]
        assert got_a["id"]
        assert got_a["ts"]
        await quiet(c)
        await send(b, {"type": "unsubscribe", "channel": "room:lobby"})
        assert await receive(b) == {"type": "unsubscribed", "channel": "room:lobby"}
        await send(a, {"type": "publish", "channel": "room:lobby", "data": 2})
        assert (await receive(a))["data"] == 2
        await quiet(b)


async def test_message_data_over_16_kib_is_refused(live: Live) -> None:
    _user_id, token = await live.user()
    async with connected(live.ws_url, token) as ws:
        await subscribe(ws, "room:big")
        await send(ws, {"type": "publish", "channel": "room:big", "data": "x" * (16 * 1024)})
        answer = await receive(ws)
        assert answer["type"] == "error"
        assert answer["code"] == "PAYLOAD_TOO_LARGE"
        await send(ws, {"type": "publish", "channel": "room:big", "data": "x" * 16_000})
        assert (await receive(ws))["type"] == "message"


async def test_publishing_is_rate_limited_per_connection(live: Live) -> None:
    _user_id, token = await live.user()
    async with connected(live.ws_url, token) as ws:
        await subscribe(ws, "room:fast")
        for n in range(8):
            await send(ws, {"type": "publish", "channel": "room:fast", "data": n})
        kinds = [(await receive(ws))["type"] for _ in range(8)]
        assert kinds.count("message") == 5  # the burst
        assert kinds.count("error") == 3


async def test_items_events_reach_only_who_may_read_the_item(live: Live) -> None:
    owner_id, owner = await live.user()
    _stranger_id, stranger = await live.user()
    _moderator_id, moderator = await live.user("moderator")
    async with (
        connected(live.ws_url, owner) as mine,
        connected(live.ws_url, stranger) as theirs,
        connected(live.ws_url, moderator) as mod,
    ):
        for ws in (mine, theirs, mod):
            await subscribe(ws, "items")
        created = await live.admin.post(
            "/api/v1/items",
            json={"title": "watched"},
            headers={"Authorization": f"Bearer {owner}"},
        )
        assert created.status_code == 201
        for ws in (mine, mod):
            event = await receive(ws)
            assert event["type"] == "event"
            assert event["channel"] == "items"
            assert event["event"] == "item.created"
            assert event["data"] == created.json()
            assert event["data"]["owner_id"] == owner_id
            assert event["seq"]
        await quiet(theirs)


async def test_renewal_with_a_later_auth_frame(live: Live) -> None:
    user_id, token = await live.user()
    async with connected(live.ws_url, token) as ws:
        await send(ws, {"type": "auth", "token": token})
        assert await receive(ws) == {"type": "ready", "user_id": user_id}
        await send(ws, {"type": "auth", "token": "garbage"})
        await _closed_with(ws, 4401)


async def test_ending_every_session_closes_4401_within_seconds(live: Live) -> None:
    _user_id, token = await live.user()
    async with connected(live.ws_url, token) as ws:
        ended = await live.admin.post(
            "/api/v1/auth/logout-all", headers={"Authorization": f"Bearer {token}"}
        )
        assert ended.status_code == 204, ended.text
        await _closed_with(ws, 4401, within=5)


async def test_deactivating_the_user_closes_4401_within_seconds(live: Live) -> None:
    user_id, token = await live.user()
    async with connected(live.ws_url, token) as ws:
        changed = await live.admin.patch(f"/api/v1/users/{user_id}", json={"is_active": False})
        assert changed.status_code == 200, changed.text
        await _closed_with(ws, 4401, within=5)


async def test_an_api_key_connection_ends_when_the_key_is_deleted(live: Live) -> None:
    _user_id, token = await live.user()
    headers = {"Authorization": f"Bearer {token}"}
    created = await live.admin.post("/api/v1/api-keys", json={"name": "rt"}, headers=headers)
    assert created.status_code == 201, created.text
    async with connected(live.ws_url, created.json()["key"]) as ws:
        deleted = await live.admin.delete(
            f"/api/v1/api-keys/{created.json()['id']}", headers=headers
        )
        assert deleted.status_code == 204
        # API keys are re-checked every fifth round of checks (2 s each by default).
        await _closed_with(ws, 4401, within=15)
