"""The broker, in-process and on Redis (two brokers with their own connections, as two
worker processes would have): live delivery with a seq, replay after a seq, gaps, and
the bounded outbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from redis.asyncio import Redis

from keel.core.broker import (
    Broker,
    Frame,
    History,
    InProcessBroker,
    Outbox,
    OutboxOverflow,
    RedisBroker,
    parse_seq,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["in-process", "redis"])
async def pair(
    request: pytest.FixtureRequest, redis_url: str | None, redis_prefix: str
) -> AsyncIterator[tuple[Broker, Broker]]:
    """(publisher, subscriber): one in-process broker twice, or two Redis brokers."""
    if request.param == "in-process":
        single = InProcessBroker(History(frames=5))
        await single.start()
        yield single, single
        await single.close()
        return
    if not redis_url:
        pytest.skip("needs Redis: set KEEL_TEST_REDIS_URL")
    clients = [Redis.from_url(redis_url), Redis.from_url(redis_url)]
    prefix = f"{redis_prefix}{request.node.name}:"
    brokers = (
        RedisBroker(clients[0], prefix, History(frames=5)),
        RedisBroker(clients[1], prefix, History(frames=5)),
    )
    for each in brokers:
        await each.start()
    yield brokers
    for each in brokers:
        await each.close()
    for client in clients:
        await client.aclose()


async def _next(outbox: Outbox) -> Frame:
    frame = await asyncio.wait_for(outbox.get(), timeout=3)
    assert isinstance(frame, Frame)
    return frame


def _payload(number: int) -> bytes:
    return orjson.dumps({"n": number})


async def test_live_frames_arrive_in_order_with_a_seq(pair: tuple[Broker, Broker]) -> None:
    publisher, subscriber = pair
    outbox, other = Outbox(), Outbox()
    async with (
        subscriber.subscribe("room:a", outbox) as (first, resume),
        subscriber.subscribe("room:b", other) as (second, _),
    ):
        first.release()
        second.release()
        assert resume.replay == []
        assert not resume.gap
        seqs = [await publisher.publish("room:a", _payload(n)) for n in range(5)]
        frames = [await _next(outbox) for _ in range(5)]
        assert [frame.data["n"] for frame in frames] == [0, 1, 2, 3, 4]
        assert [frame.seq for frame in frames] == seqs
        keys = [parse_seq(seq) or (0, 0) for seq in seqs]
        assert keys == sorted(keys)
        assert len(set(keys)) == 5
        assert len(other) == 0
        rendered = orjson.loads(frames[0].render("message"))
        assert rendered == {"type": "message", "channel": "room:a", "seq": seqs[0], "n": 0}


async def test_since_replays_what_was_missed_then_goes_live(
    pair: tuple[Broker, Broker],
) -> None:
    publisher, subscriber = pair
    seqs = [await publisher.publish("room:r", _payload(n)) for n in range(6)]
    outbox = Outbox()
    async with subscriber.subscribe("room:r", outbox, since=seqs[2]) as (subscription, resume):
        assert not resume.gap
        assert [frame.data["n"] for frame in resume.replay] == [3, 4, 5]
        # Published while the replay is being sent: held, then after it, once.
        await publisher.publish("room:r", _payload(6))
        await asyncio.sleep(0.3)
        assert len(outbox) == 0
        subscription.release()
        await publisher.publish("room:r", _payload(7))
        assert [(await _next(outbox)).data["n"] for _ in range(2)] == [6, 7]
        await asyncio.sleep(0.2)
        assert len(outbox) == 0  # none twice


async def test_since_the_newest_seq_replays_nothing(pair: tuple[Broker, Broker]) -> None:
    publisher, subscriber = pair
    last = [await publisher.publish("room:n", _payload(n)) for n in range(3)][-1]
    async with subscriber.subscribe("room:n", Outbox(), since=last) as (_sub, resume):
        assert resume.replay == []
        assert not resume.gap


@pytest.mark.parametrize("since", ["not-a-seq", "99999999999999-0", "0-1"])
async def test_an_unknown_or_lost_since_is_a_gap(pair: tuple[Broker, Broker], since: str) -> None:
    publisher, subscriber = pair
    for n in range(3):
        await publisher.publish("room:g", _payload(n))
    async with subscriber.subscribe("room:g", Outbox(), since=since) as (_sub, resume):
        assert resume.gap
        assert resume.replay == []


async def test_a_since_older_than_what_is_kept_is_a_gap(pair: tuple[Broker, Broker]) -> None:
    publisher, subscriber = pair
    first = await publisher.publish("room:old", _payload(0))
    for n in range(1, 20):
        await publisher.publish("room:old", _payload(n))
    if isinstance(publisher, RedisBroker):
        # MAXLEN ~ trims whole nodes of about 100 entries at a time: trim exactly here,
        # as it happens at scale.
        await publisher.trim_exactly("room:old", 5)
    async with subscriber.subscribe("room:old", Outbox(), since=first) as (_sub, resume):
        assert resume.gap


async def test_a_slow_consumer_overflows_its_outbox(pair: tuple[Broker, Broker]) -> None:
    publisher, subscriber = pair
    outbox = Outbox(capacity=10)
    async with subscriber.subscribe("room:slow", outbox) as (subscription, _):
        subscription.release()
        for n in range(30):
            await publisher.publish("room:slow", _payload(n))
        for _ in range(50):
            if outbox.overflowed:
                break
            await asyncio.sleep(0.05)
        assert outbox.overflowed
        assert len(outbox) == 0  # the backlog is dropped at once
        with pytest.raises(OutboxOverflow):
            await outbox.get()


async def test_two_subscribers_of_one_channel_in_one_process(pair: tuple[Broker, Broker]) -> None:
    publisher, subscriber = pair
    early, late = Outbox(), Outbox()
    async with subscriber.subscribe("items", early) as (first, _):
        first.release()
        await publisher.publish("items", _payload(1))
        assert (await _next(early)).data["n"] == 1
        async with subscriber.subscribe("items", late) as (second, _):
            second.release()
            await publisher.publish("items", _payload(2))
            assert (await _next(early)).data["n"] == 2
            assert (await _next(late)).data["n"] == 2
            await asyncio.sleep(0.2)
            assert len(late) == 0  # frame 1 came before it subscribed
