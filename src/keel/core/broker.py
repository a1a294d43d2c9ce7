"""Publish/subscribe between processes: how realtime events reach every worker.

Two backends behind one interface: in-process (the embedded default, one worker) and
Redis pub/sub (any number of workers and hosts). A subscription is a bounded queue:
a subscriber too slow to keep up loses its subscription rather than the process its
memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Protocol

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

log = structlog.get_logger("keel.broker")

SUBSCRIBER_QUEUE_SIZE = 256
RECONNECT_DELAY_SECONDS = 1.0
READ_TIMEOUT_SECONDS = 0.05


class SubscriberOverflow(Exception):
    """The subscriber fell too far behind; its queue overflowed."""


class Subscription:
    def __init__(self, channel: str, maxsize: int = SUBSCRIBER_QUEUE_SIZE) -> None:
        self.channel = channel
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize)
        self.overflowed = False

    def deliver(self, message: bytes) -> None:
        if self.overflowed:
            return
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self.overflowed = True
            self._queue.get_nowait()
            self._queue.put_nowait(None)  # wakes the reader to see the overflow

    async def get(self) -> bytes:
        message = await self._queue.get()
        if message is None:
            raise SubscriberOverflow(self.channel)
        return message


class Broker(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def publish(self, channel: str, message: bytes) -> None: ...
    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[Subscription]: ...


class _LocalFanout:
    """Subscriptions of this process, by channel."""

    def __init__(self) -> None:
        self.subscriptions: defaultdict[str, set[Subscription]] = defaultdict(set)

    def deliver(self, channel: str, message: bytes) -> None:
        for subscription in tuple(self.subscriptions.get(channel, ())):
            subscription.deliver(message)

    def add(self, subscription: Subscription) -> bool:
        """Add; True when it is the channel's first local subscriber."""
        first = not self.subscriptions.get(subscription.channel)
        self.subscriptions[subscription.channel].add(subscription)
        return first

    def remove(self, subscription: Subscription) -> bool:
        """Remove; True when the channel has no local subscriber left."""
        remaining = self.subscriptions.get(subscription.channel)
        if remaining is None:
            return False
        remaining.discard(subscription)
        if not remaining:
            del self.subscriptions[subscription.channel]
            return True
        return False


class InProcessBroker:
    def __init__(self) -> None:
        self._fanout = _LocalFanout()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._fanout.subscriptions.clear()

    async def publish(self, channel: str, message: bytes) -> None:
        self._fanout.deliver(channel, message)

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        subscription = Subscription(channel)
        self._fanout.add(subscription)
        try:
            yield subscription
        finally:
            self._fanout.remove(subscription)


class RedisBroker:
    """One pub/sub connection per process, fanned out to local subscribers.

    The reader and the (un)subscribe commands take turns on that connection under a
    lock; the reader holds it for one short read at a time, so a subscription waits at
    most that long.
    """

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix + "broker:"
        self._fanout = _LocalFanout()
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing = False
        self._turn = asyncio.Lock()

    async def start(self) -> None:
        # The reader connects in the background: a Redis that is down at start-up makes
        # the process unready (see /ready), not unable to start.
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._reader = asyncio.create_task(self._read(), name="keel-broker-reader")

    async def close(self) -> None:
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
            # redis-py can swallow a cancellation that lands mid-read; the loop then ends
            # at its next turn (at most one read timeout), so wait only that long.
            done, _ = await asyncio.wait({self._reader}, timeout=READ_TIMEOUT_SECONDS + 1)
            if not done:
                log.warning("broker_reader_still_running_at_close")
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def publish(self, channel: str, message: bytes) -> None:
        await self._redis.publish(self._prefix + channel, message)

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        if self._pubsub is None:
            raise RuntimeError("RedisBroker.subscribe before start()")
        subscription = Subscription(channel)
        if self._fanout.add(subscription):
            async with self._turn:
                await self._pubsub.subscribe(self._prefix + channel)
        try:
            yield subscription
        finally:
            if self._fanout.remove(subscription):
                async with self._turn:
                    await self._pubsub.unsubscribe(self._prefix + channel)

    async def _read(self) -> None:
        if self._pubsub is None:
            raise RuntimeError("RedisBroker read loop before start()")
        prefix_length = len(self._prefix)
        listening = False
        while not self._closing:
            try:
                async with self._turn:
                    if not listening:
                        # A channel nobody publishes to keeps the connection listening.
                        await self._pubsub.subscribe(self._prefix + "__keepalive__")
                        listening = True
                    message = await self._pubsub.get_message(timeout=READ_TIMEOUT_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep reading whatever happens, and say why
                log.warning("broker_read_failed", error=repr(exc))
                await asyncio.sleep(RECONNECT_DELAY_SECONDS)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            if isinstance(channel, bytes):
                channel = channel.decode()
            self._fanout.deliver(channel[prefix_length:], message["data"])
