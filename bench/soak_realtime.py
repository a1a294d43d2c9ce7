"""The soak's realtime clients: each holds a WebSocket subscribed to `items` and to one
room, reconnects now and then resuming both channels with `since`, renews its
credentials with an `auth` frame, and (publishers) sends a room message every few
seconds.

Every frame is checked as it comes: `seq` strictly increasing per channel across
reconnects (none twice, none out of order), no `gap` (a resume a second after the
last frame is well inside the kept history), no `error`, no close the client did not
ask for, no item event of someone else's item (a user reads only their own). What
must have arrived is compared at the end (`missing_events`, `missing_messages`).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import orjson
from soak_ledger import Account, Event, Gate
from soak_stats import Stats
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

ITEMS = "items"
FRAME_TIMEOUT = 30.0


def seq_key(seq: str) -> tuple[int, int]:
    first, _, second = seq.partition("-")
    return int(first), int(second)


class RealtimeClient:
    def __init__(
        self,
        name: str,
        account: Account,
        room: str,
        url: str,
        stats: Stats,
        seed: int,
        *,
        publisher: bool,
        sees_all: bool,
        reconnect_every: float,
        publish_every: float,
    ) -> None:
        self.name = name
        self.account = account
        self.room = room
        self.channels = (ITEMS, room)
        self.url = url
        self.stats = stats
        self.rng = random.Random(seed)  # noqa: S311 - load shape, not a secret
        self.publisher = publisher
        self.sees_all = sees_all
        self.reconnect_every = reconnect_every
        self.publish_every = publish_every
        self.last_seq: dict[str, str] = {}
        self.events: set[Event] = set()
        self.messages: set[str] = set()
        self.pending: set[str] = set()  # published on this connection, echo not yet seen
        self.unsure: set[str] = set()  # published before a reconnect, echo not yet seen
        self.acked: set[str] = set()
        self.connects = 0
        self.frames = 0
        self.renewals = 0
        self.published = 0
        self.subscribed = asyncio.Event()  # both channels, the first time
        self._confirmed: set[str] = set()
        self._closing = False

    def fail(self, category: str, detail: str) -> None:
        self.stats.fail(category, f"{self.name} ({self.account.email}): {detail}")

    # -- the connection's life ------------------------------------------------------------

    async def run(self, gate: Gate, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._session(gate, stop)
            except (OSError, TimeoutError, WebSocketException) as error:
                self.fail("realtime", f"{type(error).__name__}: {error}")
                await asyncio.sleep(1.0)

    async def _session(self, gate: Gate, stop: asyncio.Event) -> None:
        async with gate.action():
            ws = await connect(self.url, proxy=None, ping_interval=None, open_timeout=FRAME_TIMEOUT)
            try:
                reader = await self._open(ws)
            except BaseException:
                await ws.close()
                raise
        stay_until = time.monotonic() + self.rng.uniform(0.5, 1.5) * self.reconnect_every
        try:
            while not stop.is_set() and not reader.done():
                wait = self.rng.uniform(0.5, 1.5) * self.publish_every
                await asyncio.wait([reader], timeout=wait)
                async with gate.action():
                    if stop.is_set() or reader.done():
                        break
                    await self._act(ws)
                    if time.monotonic() > stay_until and self._can_resume():
                        await self._close(ws, reader)
                        return
        finally:
            await self._close(ws, reader)

    async def _open(self, ws: ClientConnection) -> asyncio.Task[None]:
        self.connects += 1
        self._closing = False
        self._confirmed = set()
        await ws.send(orjson.dumps({"type": "auth", "token": self.account.access_token}).decode())
        async with asyncio.timeout(FRAME_TIMEOUT):
            ready = orjson.loads(await ws.recv())
        if ready != {"type": "ready", "user_id": self.account.user_id}:
            self.fail("realtime", f"expected ready, got {ready}")
        for channel in self.channels:
            subscribe: dict[str, Any] = {"type": "subscribe", "channel": channel}
            if channel in self.last_seq:
                subscribe["since"] = self.last_seq[channel]
            await ws.send(orjson.dumps(subscribe).decode())
        return asyncio.create_task(self._read(ws), name=f"soak-ws-{self.name}")

    def _can_resume(self) -> bool:
        """Resuming needs the last `seq` of both channels (without it, what was
        published meanwhile could not be asked for)."""
        return all(channel in self.last_seq for channel in self.channels)

    async def _act(self, ws: ClientConnection) -> None:
        roll = self.rng.random()
        if roll < 0.05:
            self.renewals += 1
            await ws.send(
                orjson.dumps({"type": "auth", "token": self.account.access_token}).decode()
            )
        elif roll < 0.1:
            await ws.send('{"type":"ping"}')
        if self.publisher and self.room in self._confirmed:
            self.published += 1
            mark = f"{self.name}-{self.published}"
            self.pending.add(mark)
            data = {"m": mark, "pad": "p" * self.rng.randrange(0, 2048)}
            await ws.send(
                orjson.dumps({"type": "publish", "channel": self.room, "data": data}).decode()
            )

    async def _close(self, ws: ClientConnection, reader: asyncio.Task[None]) -> None:
        self._closing = True
        self.unsure |= self.pending - self.acked
        self.pending = set()
        await ws.close()
        await asyncio.gather(reader, return_exceptions=True)

    # -- frames ---------------------------------------------------------------------------

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                self.frames += 1
                self._take(orjson.loads(raw))
        except ConnectionClosed:
            pass
        if not self._closing:
            self.fail(
                "realtime closed", f"the server closed: code {ws.close_code} {ws.close_reason}"
            )

    def _take(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind in {"event", "message"}:
            self._ordered(frame)
        if kind == "event":
            self._event(frame)
        elif kind == "message":
            self._message(frame)
        elif kind == "subscribed":
            self._confirmed.add(frame["channel"])
            if self._confirmed >= set(self.channels):
                self.subscribed.set()
        elif kind == "ready":
            pass  # the answer to a renewal
        elif kind != "pong":
            self.fail("realtime frame", f"{frame}")

    def _ordered(self, frame: dict[str, Any]) -> None:
        channel, seq = frame["channel"], frame["seq"]
        last = self.last_seq.get(channel)
        if last is not None and seq_key(seq) <= seq_key(last):
            self.fail("realtime order", f"{channel}: seq {seq} after {last}")
        self.last_seq[channel] = seq

    def _event(self, frame: dict[str, Any]) -> None:
        data = frame["data"]
        if not self.sees_all and data["owner_id"] != self.account.user_id:
            self.fail("realtime visibility", f"event of {data['owner_id']}'s item {data['id']}")
        event: Event = (
            frame["event"],
            data["id"],
            0 if frame["event"] == "item.deleted" else data["version"],
        )
        if event in self.events:
            self.fail("realtime twice", f"{event}")
        self.events.add(event)

    def _message(self, frame: dict[str, Any]) -> None:
        mark = frame["data"]["m"]
        if mark in self.messages:
            self.fail("realtime twice", f"message {mark}")
        self.messages.add(mark)
        if frame["from"] == self.account.user_id and mark.startswith(self.name + "-"):
            self.acked.add(mark)

    # -- the end --------------------------------------------------------------------------

    def lost_publishes(self) -> set[str]:
        """Published on a connection that stayed open, never echoed back."""
        return self.pending - self.acked

    def missing_events(self, expected: set[Event]) -> set[Event]:
        return expected - self.events

    def missing_messages(self, expected: set[str]) -> set[str]:
        return expected - self.messages
