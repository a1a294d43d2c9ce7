"""One realtime connection, once authenticated: its subscriptions, its outbox, and the
two tasks that serve it (one reads the client's frames, one sends from the outbox).

Everything the client is sent goes through its bounded outbox, so one task writes to
the socket and a client that stops reading overflows the outbox: it is closed with 1013
and the frames waiting for it are dropped at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from keel.auth.deps import Principal
from keel.auth.permissions import Permission
from keel.core.broker import Broker, BrokerUnavailable, Frame, Outbox, OutboxOverflow
from keel.core.ids import uuid7
from keel.core.metrics import Metrics
from keel.realtime import frames
from keel.realtime.frames import (
    AuthFrame,
    PingFrame,
    PublishFrame,
    SubscribeFrame,
    UnsubscribeFrame,
)

log = structlog.get_logger("keel.realtime")

# Close codes (API.md).
BAD_CREDENTIALS = 4401
POLICY_VIOLATION = 1008
TOO_BIG = 1009
TRY_AGAIN_LATER = 1013
# Frames sent are added to the metric this many at a time (and at the end).
COUNT_EVERY = 32

Reauthenticate = Callable[[str], Awaitable[Principal]]


class _Bucket:
    """A token bucket: `burst` at once, refilled at `rate` per second."""

    def __init__(self, burst: int, rate: float) -> None:
        self.burst, self.rate = burst, rate
        self.tokens = float(burst)
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Connection:
    def __init__(
        self,
        websocket: WebSocket,
        principal: Principal,
        credential: str,
        *,
        broker: Broker,
        metrics: Metrics,
        reauthenticate: Reauthenticate,
        outbox_frames: int,
        publish_burst: int,
        publish_per_second: float,
    ) -> None:
        self.websocket = websocket
        self.principal = principal
        self.credential = credential
        self.broker = broker
        self.metrics = metrics
        self.reauthenticate = reauthenticate
        self.outbox = Outbox(outbox_frames, on_overflow=self._too_slow)
        self.publishing = _Bucket(publish_burst, publish_per_second)
        self.channels: dict[str, contextlib.AsyncExitStack] = {}
        self.close_code: int | None = None
        self.close_reason = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._frames_in = metrics.ws_frames.labels("in")
        self._frames_out = metrics.ws_frames.labels("out")
        self._sent = 0

    # -- lifecycle --------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until the client leaves or the connection is closed; then clean up."""
        self._tasks = {
            asyncio.create_task(self._receive_loop(), name="keel-ws-receive"),
            asyncio.create_task(self._send_loop(), name="keel-ws-send"),
        }
        try:
            await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for stack in self.channels.values():
                with contextlib.suppress(Exception):
                    await stack.aclose()
            self.channels.clear()
            self.outbox.discard()  # whatever still waits: the memory goes now
            self._frames_out.inc(self._sent)
            self._sent = 0
            if self.close_code is not None:
                with contextlib.suppress(Exception):
                    await self.websocket.close(self.close_code, self.close_reason)

    def close(self, code: int, reason: str, metric: str) -> None:
        """End the connection with `code` (from any task)."""
        if self.close_code is not None:
            return
        self.close_code, self.close_reason = code, reason
        self.metrics.ws_closes.labels(metric).inc()
        for task in self._tasks:
            task.cancel()

    def _too_slow(self) -> None:
        self.close(TRY_AGAIN_LATER, "too slow to read", "slow_consumer")

    def send(self, text: str) -> None:
        self.outbox.put_nowait(text)

    # -- sending ----------------------------------------------------------------------

    def _visible(self, frame: Frame) -> bool:
        if frame.channel != frames.ITEMS:
            return True
        if self.principal.can(Permission.ITEMS_READ_ANY):
            return True
        item = frame.data.get("data")
        return isinstance(item, dict) and item.get("owner_id") == str(self.principal.user_id)

    async def _send_loop(self) -> None:
        while True:
            try:
                item = await self.outbox.get()
            except OutboxOverflow:
                self._too_slow()
                return
            if isinstance(item, Frame):
                if item.channel not in self.channels or not self._visible(item):
                    continue
                text = item.render("event" if item.channel == frames.ITEMS else "message")
            else:
                text = item
            await self.websocket.send_text(text)
            self._sent += 1
            if self._sent >= COUNT_EVERY:
                # Counted in batches: a counter's increment takes a lock, per frame it
                # showed in the profile of a 1,000-subscriber fan-out.
                self._frames_out.inc(self._sent)
                self._sent = 0

    # -- receiving --------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            try:
                message = await self.websocket.receive()
            except WebSocketDisconnect:
                return
            if message["type"] == "websocket.disconnect":
                return
            self._frames_in.inc()
            text = message.get("text")
            if text is None:
                self.close(POLICY_VIOLATION, "frames are JSON text", "not_json")
                return
            if len(text) > frames.MAX_FRAME_BYTES or len(text.encode()) > frames.MAX_FRAME_BYTES:
                self.close(TOO_BIG, "frame too large", "too_big")
                return
            await self.handle(text)

    async def handle(self, text: str) -> None:
        try:
            frame = frames.CLIENT_FRAMES.validate_json(text)
        except ValidationError as exc:
            if any(error["type"] == "json_invalid" for error in exc.errors()):
                self.close(POLICY_VIOLATION, "a frame is not JSON", "not_json")
                return
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            self.send(frames.error("VALIDATION_ERROR", f"{where}: {problem['msg']}"))
            return
        if isinstance(frame, PingFrame):
            self.send(frames.PONG)
        elif isinstance(frame, SubscribeFrame):
            await self.subscribe(frame.channel, frame.since)
        elif isinstance(frame, UnsubscribeFrame):
            await self.unsubscribe(frame.channel)
        elif isinstance(frame, PublishFrame):
            await self.publish(frame.channel, frame.data)
        elif isinstance(frame, AuthFrame):
            await self.renew(frame.token)

    async def subscribe(self, channel: str, since: str | None) -> None:
        if not frames.is_channel(channel):
            self.send(frames.error("UNKNOWN_CHANNEL", f"No channel {channel!r}"))
            return
        if channel in self.channels:
            # Subscribing again (with `since`, after a hiccup) starts it over.
            await self.channels.pop(channel).aclose()
        stack = contextlib.AsyncExitStack()
        try:
            subscription, resume = await stack.enter_async_context(
                self.broker.subscribe(channel, self.outbox, since)
            )
        except BrokerUnavailable:
            await stack.aclose()
            self.send(frames.error("SERVICE_UNAVAILABLE", "Channels are unavailable; retry"))
            return
        self.channels[channel] = stack
        self.send(frames.subscribed(channel))
        if resume.gap:
            self.metrics.ws_gaps.inc()
            self.send(frames.gap(channel))
        for frame in resume.replay:
            await self.outbox.put(frame)  # waits for room: a replay is never "too slow"
        if resume.replay:
            self.metrics.ws_replayed.inc(len(resume.replay))
        subscription.release()

    async def unsubscribe(self, channel: str) -> None:
        stack = self.channels.pop(channel, None)
        if stack is None:
            self.send(frames.error("NOT_SUBSCRIBED", f"Not subscribed to {channel!r}"))
            return
        await stack.aclose()
        self.send(frames.unsubscribed(channel))

    async def publish(self, channel: str, data: Any) -> None:
        if not frames.is_room(channel):
            self.send(frames.error("FORBIDDEN", "Only room:<name> channels take messages"))
            return
        if channel not in self.channels:
            self.send(frames.error("NOT_SUBSCRIBED", f"Subscribe to {channel!r} to publish"))
            return
        encoded = orjson.dumps(data)
        if len(encoded) > frames.MAX_MESSAGE_DATA_BYTES:
            self.send(
                frames.error(
                    "PAYLOAD_TOO_LARGE",
                    f"data is {len(encoded)} bytes; at most {frames.MAX_MESSAGE_DATA_BYTES}",
                )
            )
            return
        if not self.publishing.take():
            self.send(frames.error("RATE_LIMITED", "Too many messages; slow down"))
            return
        # A publisher gets its own messages back: it waits while its outbox is half
        # full, so a fast publisher is slowed to what it reads, not closed as too slow.
        await self.outbox.wait_for_room()
        payload = orjson.dumps(
            {
                "id": str(uuid7()),
                "from": str(self.principal.user_id),
                "data": orjson.Fragment(encoded),
                "ts": datetime.now(UTC).isoformat(),
            }
        )
        try:
            await self.broker.publish(channel, payload)
        except BrokerUnavailable:
            self.send(frames.error("SERVICE_UNAVAILABLE", "The message was not sent; retry"))

    async def renew(self, token: str) -> None:
        try:
            principal = await self.reauthenticate(token)
        except Exception:  # noqa: BLE001 - any refusal of the new credential
            principal = None
        if principal is None or principal.user_id != self.principal.user_id:
            self.close(BAD_CREDENTIALS, "bad credentials", "bad_credentials")
            return
        self.principal, self.credential = principal, token
        self.send(frames.ready(str(principal.user_id)))
