"""Realtime tests talk to a real `keel serve` with the `websockets` package."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect

from tests.support.servers import STARTUP_SECONDS, Server, live_env, serve, wait_until_healthy

ADMIN_EMAIL = "realtime.admin@example.com"
PASSWORD = "a long and uncommon passphrase"
_numbers = itertools.count(1)


@dataclass
class Live:
    """A running server, and an admin client for making users and items."""

    server: Server
    admin: httpx.AsyncClient

    @property
    def ws_url(self) -> str:
        return self.server.url.replace("http://", "ws://") + "/api/v1/realtime"

    async def user(self, role: str = "user") -> tuple[str, str]:
        """A new account of `role`: (its id, an access token)."""
        email = f"rt{next(_numbers)}-{id(self)}@example.com"
        created = await self.admin.post(
            "/api/v1/users",
            json={"email": email, "password": PASSWORD, "role": role, "is_verified": True},
        )
        assert created.status_code == 201, created.text
        return created.json()["id"], await token(self.server.url, email)


async def token(base_url: str, email: str, password: str = PASSWORD) -> str:
    async with httpx.AsyncClient(base_url=base_url) as client:
        answer = await client.post(
            "/api/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": password},
        )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def running(
    tmp_path: Path, database_url: str, *args: str, **settings: str
) -> contextlib.AbstractAsyncContextManager[Live]:
    return running_within(STARTUP_SECONDS, tmp_path, database_url, *args, **settings)


@contextlib.asynccontextmanager
async def running_within(
    startup_seconds: float, tmp_path: Path, database_url: str, *args: str, **settings: str
) -> AsyncIterator[Live]:
    """`running`, waiting up to `startup_seconds` for the server to answer (several
    workers import the app each, slowly under coverage)."""
    env = live_env(
        tmp_path,
        database_url,
        KEEL_FIRST_ADMIN_EMAIL=ADMIN_EMAIL,
        KEEL_FIRST_ADMIN_PASSWORD=PASSWORD,
        **settings,
    )
    with serve(tmp_path, env, *args) as server:
        await wait_until_healthy(server, startup_seconds)
        admin_token = await token(server.url, ADMIN_EMAIL)
        headers = {"Authorization": f"Bearer {admin_token}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers) as admin:
            yield Live(server, admin)


@contextlib.asynccontextmanager
async def connected(
    url: str, token_value: str | None = None, **options: Any
) -> AsyncIterator[ClientConnection]:
    """A connection that has sent its auth frame (when given a token) and read `ready`."""
    async with connect(url, **options) as ws:
        if token_value is not None:
            await send(ws, {"type": "auth", "token": token_value})
            ready = await receive(ws)
            assert ready["type"] == "ready", ready
        yield ws


async def send(ws: ClientConnection, frame: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(frame).decode())


async def receive(ws: ClientConnection, timeout: float = 5) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    frame: dict[str, Any] = orjson.loads(raw)
    return frame


async def subscribe(ws: ClientConnection, channel: str, since: str | None = None) -> None:
    frame: dict[str, Any] = {"type": "subscribe", "channel": channel}
    if since is not None:
        frame["since"] = since
    await send(ws, frame)
    answer = await receive(ws)
    assert answer == {"type": "subscribed", "channel": channel}, answer


async def quiet(ws: ClientConnection, seconds: float = 0.3) -> None:
    """Nothing arrives for `seconds`."""
    try:
        frame = await asyncio.wait_for(ws.recv(), seconds)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected frame: {frame!r}")
