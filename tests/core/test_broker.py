"""The broker delivers to every subscriber of a channel, in-process and across Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from keel.core.broker import InProcessBroker, RedisBroker, SubscriberOverflow, Subscription

pytestmark = pytest.mark.anyio


async def _next(subscription: Subscription) -> bytes:
    return await asyncio.wait_for(subscription.get(), timeout=3)


async def test_in_process_delivers_to_each_subscriber_of_the_channel() -> None:
    broker = InProcessBroker()
    await broker.start()
    async with (
        broker.subscribe("items") as first,
        broker.subscribe("items") as second,
        broker.subscribe("room:other") as other,
    ):
        await broker.publish("items", b"one")
        assert await _next(first) == b"one"
        assert await _next(second) == b"one"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(other.get(), timeout=0.05)
    await broker.publish("items", b"nobody listens")
    await broker.close()


async def test_a_subscriber_that_falls_behind_is_told() -> None:
    broker = InProcessBroker()
    async with broker.subscribe("items") as slow:
        for number in range(300):
            await broker.publish("items", str(number).encode())
        assert slow.overflowed
        # The oldest message made room for the overflow notice; the rest arrive in order.
        delivered = [await _next(slow) for _ in range(255)]
        assert delivered == [str(number).encode() for number in range(1, 256)]
        with pytest.raises(SubscriberOverflow):
            await _next(slow)


@pytest.fixture
async def two_processes(
    requires_redis: str, redis_prefix: str
) -> AsyncIterator[tuple[RedisBroker, RedisBroker]]:
    """Two brokers with their own connections, as two worker processes would have."""
    clients = [Redis.from_url(requires_redis), Redis.from_url(requires_redis)]
    brokers = (RedisBroker(clients[0], redis_prefix), RedisBroker(clients[1], redis_prefix))
    for broker in brokers:
        await broker.start()
    yield brokers
    for broker in brokers:
        await broker.close()
    for client in clients:
        await client.aclose()


async def test_redis_delivers_across_processes(
    two_processes: tuple[RedisBroker, RedisBroker],
) -> None:
    publisher, subscriber = two_processes
    async with (
        subscriber.subscribe("items") as first,
        subscriber.subscribe("items") as second,
        publisher.subscribe("items") as local,
    ):
        await asyncio.sleep(0.1)  # let both subscriptions reach Redis
        await publisher.publish("items", b"created")
        assert await _next(first) == b"created"
        assert await _next(second) == b"created"
        assert await _next(local) == b"created"


async def test_redis_unsubscribes_when_the_last_local_subscriber_leaves(
    two_processes: tuple[RedisBroker, RedisBroker], requires_redis: str, redis_prefix: str
) -> None:
    _, subscriber = two_processes
    probe = Redis.from_url(requires_redis)
    channel = f"{redis_prefix}broker:room:a"

    async def subscribers() -> int:
        return int(dict(await probe.pubsub_numsub(channel))[channel.encode()])

    async def settles_at(expected: int) -> int:
        # Subscribing and unsubscribing are commands Redis applies a moment later.
        for _ in range(100):
            if (count := await subscribers()) == expected:
                return count
            await asyncio.sleep(0.02)
        return await subscribers()

    try:
        async with subscriber.subscribe("room:a"), subscriber.subscribe("room:a"):
            # Two local subscribers share the process's one Redis subscription.
            assert await settles_at(1) == 1
        assert await settles_at(0) == 0
    finally:
        await probe.aclose()
