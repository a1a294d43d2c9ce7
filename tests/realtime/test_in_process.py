"""The realtime endpoint served in this process (Starlette's test client), on the suite's
backends: the in-process broker on the embedded run, Redis on the other. The live-server
tests beside this one cover what needs real sockets and processes; these cover the same
paths where the coverage tool sees them, and run in milliseconds."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from keel.config import Settings
from keel.main import create_app
from tests.conftest import SettingsFactory, empty_tables, forget_redis_keys

ADMIN = "inproc.admin@example.com"
PASSWORD = "a long and uncommon passphrase"
WS = "/api/v1/realtime"

# anyio: the database fixtures are async. The tests themselves drive the test client,
# which runs the app on a thread of its own, with blocking calls.
pytestmark = pytest.mark.anyio


@pytest.fixture
def served(make_settings: SettingsFactory, migrated_database: str) -> Iterator[TestClient]:
    settings: Settings = make_settings(
        first_admin={"email": ADMIN, "password": PASSWORD},
        realtime={"publish_burst": 3, "publish_per_second": 0.1},
    )
    app: FastAPI = create_app(settings)
    with TestClient(app) as client:
        try:
            yield client
        finally:
            assert client.portal is not None
            client.portal.call(empty_tables, app)
            client.portal.call(forget_redis_keys, app)


def _token(client: TestClient, email: str) -> str:
    answer = client.post(
        "/api/v1/auth/token",
        data={"grant_type": "password", "username": email, "password": PASSWORD},
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def _user(client: TestClient, email: str, role: str = "user") -> tuple[str, str]:
    admin = {"Authorization": f"Bearer {_token(client, ADMIN)}"}
    created = client.post(
        "/api/v1/users",
        json={"email": email, "password": PASSWORD, "role": role, "is_verified": True},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    return created.json()["id"], _token(client, email)


def _ready(ws: Any, token: str) -> dict[str, Any]:
    ws.send_json({"type": "auth", "token": token})
    ready: dict[str, Any] = ws.receive_json()
    assert ready["type"] == "ready"
    return ready


async def test_rooms_errors_and_rate_limit(served: TestClient) -> None:
    alice_id, alice = _user(served, "alice.rt@example.com")
    _bob_id, bob = _user(served, "bob.rt@example.com")
    with served.websocket_connect(WS) as a, served.websocket_connect(WS) as b:
        assert _ready(a, alice)["user_id"] == alice_id
        _ready(b, bob)
        for ws in (a, b):
            ws.send_json({"type": "subscribe", "channel": "room:r"})
            assert ws.receive_json() == {"type": "subscribed", "channel": "room:r"}
        a.send_json({"type": "publish", "channel": "room:r", "data": {"x": 1}})
        for ws in (a, b):
            message = ws.receive_json()
            assert message["type"] == "message"
            assert message["from"] == alice_id
            assert message["data"] == {"x": 1}
        for frame, code in [
            ({"type": "subscribe", "channel": "nope"}, "UNKNOWN_CHANNEL"),
            ({"type": "publish", "channel": "room:other", "data": 1}, "NOT_SUBSCRIBED"),
            ({"type": "publish", "channel": "items", "data": 1}, "FORBIDDEN"),
            ({"type": "publish", "channel": "room:r", "data": "x" * 17_000}, "PAYLOAD_TOO_LARGE"),
            ({"type": "unsubscribe", "channel": "room:none"}, "NOT_SUBSCRIBED"),
            ({"type": "nonsense"}, "VALIDATION_ERROR"),
        ]:
            a.send_json(frame)
            answer = a.receive_json()
            assert (answer["type"], answer["code"]) == ("error", code), frame
        # A burst of 3 (one used above), then refused.
        kinds = []
        for n in range(3):
            a.send_json({"type": "publish", "channel": "room:r", "data": n})
            kinds.append(a.receive_json()["type"])
        assert kinds == ["message", "message", "error"]
        a.send_json({"type": "ping"})
        assert a.receive_json() == {"type": "pong"}
        a.send_json({"type": "unsubscribe", "channel": "room:r"})
        assert a.receive_json() == {"type": "unsubscribed", "channel": "room:r"}
        a.send_json({"type": "auth", "token": alice})
        assert a.receive_json()["type"] == "ready"


async def test_items_events_resume_and_gap(served: TestClient) -> None:
    owner_id, owner = _user(served, "owner.rt@example.com")
    headers = {"Authorization": f"Bearer {owner}"}
    with served.websocket_connect(WS, headers=headers) as ws:
        assert ws.receive_json() == {"type": "ready", "user_id": owner_id}
        ws.send_json({"type": "subscribe", "channel": "items"})
        assert ws.receive_json()["type"] == "subscribed"
        created = served.post("/api/v1/items", json={"title": "one"}, headers=headers)
        event = ws.receive_json()
        assert event["event"] == "item.created"
        assert event["data"] == created.json()
        seen = event["seq"]
    second = served.post("/api/v1/items", json={"title": "two"}, headers=headers)
    with served.websocket_connect(WS, headers=headers) as ws:
        ws.receive_json()
        ws.send_json({"type": "subscribe", "channel": "items", "since": seen})
        assert ws.receive_json()["type"] == "subscribed"
        replayed = ws.receive_json()
        assert replayed["data"]["id"] == second.json()["id"]
        ws.send_json({"type": "subscribe", "channel": "items", "since": "garbage"})
        assert ws.receive_json()["type"] == "subscribed"
        assert ws.receive_json() == {"type": "gap", "channel": "items"}


async def test_refusals_close_the_connection(served: TestClient) -> None:
    _user_id, token = _user(served, "closing.rt@example.com")
    with served.websocket_connect(WS) as ws:
        ws.send_json({"type": "auth", "token": "not a token"})
        with pytest.raises(WebSocketDisconnect) as bad:
            ws.receive_json()
    assert bad.value.code == 4401
    with served.websocket_connect(WS) as ws:
        _ready(ws, token)
        ws.send_text("{not json")
        with pytest.raises(WebSocketDisconnect) as not_json:
            ws.receive_json()
    assert not_json.value.code == 1008
    with served.websocket_connect(WS) as ws:
        _ready(ws, token)
        ws.send_bytes(b"binary")
        with pytest.raises(WebSocketDisconnect) as binary:
            ws.receive_json()
    assert binary.value.code == 1008
    with served.websocket_connect(WS) as ws:
        _ready(ws, token)
        ws.send_json({"type": "auth", "token": "garbage"})
        with pytest.raises(WebSocketDisconnect) as renewal:
            ws.receive_json()
    assert renewal.value.code == 4401
    with (
        pytest.raises(WebSocketDisconnect) as refused,
        served.websocket_connect(WS, headers={"Authorization": "Bearer nope"}),
    ):
        pass
    assert refused.value.code == 1008
