"""Channels of frames, delivered to every worker and host, each frame with its `seq`.

Two backends behind one interface: in-process (the embedded default, one worker) and
Redis (any number of workers and hosts). Both keep each channel's recent frames (at
least `History.seconds`, at most about `History.frames`), so a subscriber that comes
back with the last `seq` it saw gets what it missed, in order, none twice; or, when
that is no longer kept, a `gap`.

Why Redis Streams, not pub/sub: one `XADD` both delivers a frame and keeps it, its
entry id is a `seq` that orders the channel across every publisher, `XRANGE` replays
from any `seq`, and a reader that lost its connection resumes from the last id it read,
so nothing published meanwhile by other processes is lost. Pub/sub would need a second
store for the history, a seq made elsewhere, and drops whatever is published while a
subscriber reconnects.

Frames are delivered into an `Outbox`, one bounded queue per consumer (a WebSocket
connection): a consumer too slow to keep up overflows it and is told, instead of the
process holding its backlog.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

log = structlog.get_logger("keel.broker")


@dataclass(frozen=True, slots=True)
class History:
    """How much of each channel is kept for resuming (API.md: at least 5 minutes, up to
    10,000 frames)."""

    seconds: int = 300
    frames: int = 10_000


OUTBOX_FRAMES = 1_024
READ_BLOCK_MS = 100
READ_BATCH = 500
RECONNECT_DELAY_SECONDS = 1.0

SeqKey = tuple[int, int]


class BrokerUnavailable(Exception):
    """The broker's store cannot be reached (Redis down): try again later."""


class OutboxOverflow(Exception):
    """The consumer fell too far behind: its outbox overflowed."""


def parse_seq(seq: str) -> SeqKey | None:
    """`<milliseconds>-<n>`, as Redis stream ids are (the in-process broker makes the
    same); None for anything else."""
    first, dash, second = seq.partition("-")
    if not dash or not first.isdigit() or not second.isdigit():
        return None
    return int(first), int(second)


def format_seq(key: SeqKey) -> str:
    return f"{key[0]}-{key[1]}"


@dataclass(slots=True)
class Frame:
    """One published payload (a JSON object) and its place in its channel."""

    channel: str
    seq: str
    key: SeqKey
    payload: bytes
    # Shared by every local subscriber: parsed and rendered once, not once each.
    _data: dict[str, Any] | None = field(default=None, repr=False)
    _rendered: dict[str, str] = field(default_factory=dict, repr=False)

    def bare(self) -> Frame:
        """This frame without its parsed and rendered forms."""
        return Frame(self.channel, self.seq, self.key, self.payload)

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            self._data = orjson.loads(self.payload)
        return self._data

    def render(self, kind: str) -> str:
        """The frame as sent to clients (a text frame): `{"type": kind, "channel",
        "seq", **payload}`."""
        rendered = self._rendered.get(kind)
        if rendered is None:
            rendered = orjson.dumps(
                {"type": kind, "channel": self.channel, "seq": self.seq, **self.data}
            ).decode()
            self._rendered[kind] = rendered
        return rendered


class Outbox:
    """A consumer's bounded queue of frames from all its subscriptions.

    Live frames are put without waiting (`put_nowait`): when the queue is full the
    consumer is too slow, the backlog is dropped and `get` raises `OutboxOverflow`.
    A replay is put with `put` and waits for room (it is the consumer's own request),
    leaving half the queue for live frames meanwhile.
    """

    def __init__(
        self, capacity: int = OUTBOX_FRAMES, on_overflow: Callable[[], None] | None = None
    ) -> None:
        self.capacity = capacity
        self._on_overflow = on_overflow
        self._items: deque[Any] = deque()
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.overflowed = False

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: Any) -> None:
        if self.overflowed:
            return
        if len(self._items) >= self.capacity:
            self.overflow()
            return
        self._items.append(item)
        self._readable.set()

    def overflow(self) -> None:
        if self.overflowed:
            return
        self.discard()
        if self._on_overflow is not None:
            self._on_overflow()

    def discard(self) -> None:
        """Drop everything waiting and take nothing more (the consumer is gone)."""
        self.overflowed = True
        self._items.clear()  # the memory goes now, not when the consumer's task ends
        self._readable.set()
        self._room.set()

    async def put(self, item: Any) -> None:
        await self.wait_for_room()
        self.put_nowait(item)

    async def wait_for_room(self) -> None:
        """Until the queue is at most half full (or has overflowed)."""
        while len(self._items) >= self.capacity // 2 and not self.overflowed:
            self._room.clear()
            await self._room.wait()

    async def get(self) -> Any:
        while not self._items:
            if self.overflowed:
                raise OutboxOverflow
            self._readable.clear()
            await self._readable.wait()
        if self.overflowed:
            raise OutboxOverflow
        item = self._items.popleft()
        if len(self._items) < self.capacity // 2:
            self._room.set()
        return item


class Subscription:
    """One consumer's interest in one channel: live frames go to its outbox, in order
    and once each (frames at or before `last` are skipped, which is how a replay and
    the live frames it overlaps are joined). While `holding`, live frames wait here
    (a replay is being sent first)."""

    def __init__(self, channel: str, outbox: Outbox, last: SeqKey) -> None:
        self.channel = channel
        self.outbox = outbox
        self.last = last
        self.holding = True
        self._held: list[Frame] = []

    def deliver(self, frame: Frame) -> None:
        if frame.key <= self.last:
            return
        if self.holding:
            if len(self._held) >= self.outbox.capacity:
                self.outbox.overflow()
                self._held.clear()
                return
            self._held.append(frame)
            return
        self.last = frame.key
        self.outbox.put_nowait(frame)

    def release(self) -> None:
        """The replay is out: send what was held (newer than the replay), then go live."""
        self.holding = False
        held, self._held = self._held, []
        # In seq order: a catch-up read may have added older frames after newer ones.
        for frame in sorted(held, key=lambda frame: frame.key):
            self.deliver(frame)


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a subscription starts: frames to replay first, or a gap."""

    replay: list[Frame]
    gap: bool


class Broker(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def publish(self, channel: str, payload: bytes) -> str:
        """Append `payload` (a JSON object) to `channel`; its seq. Raises
        BrokerUnavailable when the store cannot take it."""

    def subscribe(
        self, channel: str, outbox: Outbox, since: str | None = None
    ) -> contextlib.AbstractAsyncContextManager[tuple[Subscription, Resume]]:
        """Live frames of `channel` into `outbox` (held until `release()`), and what to
        replay first when `since` is given."""


class _LocalFanout:
    """Subscriptions of this process, by channel."""

    def __init__(self) -> None:
        self.subscriptions: dict[str, set[Subscription]] = {}

    def deliver(self, frame: Frame) -> None:
        for subscription in tuple(self.subscriptions.get(frame.channel, ())):
            subscription.deliver(frame)

    def add(self, subscription: Subscription) -> bool:
        """Add; True when it is the channel's first local subscriber."""
        existing = self.subscriptions.setdefault(subscription.channel, set())
        existing.add(subscription)
        return len(existing) == 1

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

    @property
    def channels(self) -> list[str]:
        return list(self.subscriptions)


# ---------------------------------------------------------------- in-process


@dataclass(slots=True)
class _History:
    frames: deque[tuple[float, Frame]] = field(default_factory=deque)
    last: SeqKey = (0, 0)
    # The newest seq no longer kept: a `since` before it has missed something.
    dropped: SeqKey = (0, 0)

    def prune(self, now: float, keep: History) -> None:
        while self.frames and (
            len(self.frames) > keep.frames or self.frames[0][0] < now - keep.seconds
        ):
            _at, frame = self.frames.popleft()
            self.dropped = frame.key


class InProcessBroker:
    def __init__(self, history: History | None = None) -> None:
        self._keep = history or History()
        self._fanout = _LocalFanout()
        self._histories: dict[str, _History] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._fanout.subscriptions.clear()

    def _next_key(self, history: _History) -> SeqKey:
        now_ms = int(time.time() * 1000)
        if now_ms > history.last[0]:
            return now_ms, 0
        return history.last[0], history.last[1] + 1

    async def publish(self, channel: str, payload: bytes) -> str:
        history = self._histories.setdefault(channel, _History())
        key = self._next_key(history)
        history.last = key
        # An exact-size copy: orjson's output keeps the 4 KiB buffer it was written
        # into, and the history holds up to `frames` payloads per channel (measured:
        # 40 MiB instead of 1.7 MiB for 10,000 frames of 150 bytes).
        frame = Frame(channel, format_seq(key), key, memoryview(payload).tobytes())
        now = time.monotonic()
        # The history keeps a copy without the parsed and rendered forms that delivery
        # fills in: up to `frames` per channel, each at the size it was published.
        history.frames.append((now, frame.bare()))
        history.prune(now, self._keep)
        self._fanout.deliver(frame)
        return frame.seq

    def _resume(self, history: _History | None, since: str) -> Resume:
        key = parse_seq(since)
        if history is None or key is None:
            return Resume([], gap=True)
        kept = [frame.key for _at, frame in history.frames]
        # A seq this channel gave and still knows: a kept frame's, or the last dropped
        # one's (everything after it is kept). Anything else is a gap.
        if key != history.dropped and kept[bisect.bisect_left(kept, key) :][:1] != [key]:
            return Resume([], gap=True)
        replay = [frame.bare() for _at, frame in history.frames if frame.key > key]
        return Resume(replay, gap=False)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, channel: str, outbox: Outbox, since: str | None = None
    ) -> AsyncIterator[tuple[Subscription, Resume]]:
        history = self._histories.get(channel)
        if history is not None:
            history.prune(time.monotonic(), self._keep)
        live_from = history.last if history is not None else (0, 0)
        resume = Resume([], gap=False)
        if since is not None:
            resume = self._resume(history, since)
            if resume.replay:
                live_from = resume.replay[-1].key
        # Nothing can be published between the lines above and this one (no await).
        subscription = Subscription(channel, outbox, live_from)
        self._fanout.add(subscription)
        try:
            yield subscription, resume
        finally:
            self._fanout.remove(subscription)
            if history is not None and not history.frames and channel not in self._fanout.channels:
                self._histories.pop(channel, None)


# ---------------------------------------------------------------- Redis


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBroker:
    """A stream per channel (`XADD` with `MAXLEN ~ frames`, expiring `seconds` after its
    last frame), and one reader per process: `XREAD` over
    every channel it has subscribers for, from the last id it read of each, fanned out
    to the local subscriptions."""

    def __init__(self, redis: Redis, prefix: str, history: History | None = None) -> None:
        self._keep = history or History()
        # Any: redis-py types its stream commands' answers as unions of every shape.
        self._redis: Any = redis
        self._prefix = prefix + "rt:"
        self._fanout = _LocalFanout()
        # Where the reader is in each channel it reads.
        self._positions: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._closing = False

    def _key(self, channel: str) -> str:
        return self._prefix + channel

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read(), name="keel-broker-reader")

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._reader is not None:
            self._reader.cancel()
            done, _ = await asyncio.wait({self._reader}, timeout=READ_BLOCK_MS / 1000 + 1)
            if not done:
                log.warning("broker_reader_still_running_at_close")

    async def publish(self, channel: str, payload: bytes) -> str:
        key = self._key(channel)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(key, {"p": payload}, maxlen=self._keep.frames, approximate=True)
                pipe.expire(key, self._keep.seconds)
                seq, _expiring = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(str(exc)) from exc
        return _text(seq)

    async def trim_exactly(self, channel: str, frames: int) -> None:
        """Keep only the newest `frames` (tests: MAXLEN ~ trims in whole nodes)."""
        await self._redis.xtrim(self._key(channel), maxlen=frames, approximate=False)

    async def _latest(self, channel: str) -> str:
        entries = await self._redis.xrevrange(self._key(channel), count=1)
        return _text(entries[0][0]) if entries else "0-0"

    async def _resume(self, channel: str, since: str) -> tuple[Resume, str]:
        """What to replay after `since`, and the last id it reaches."""
        since_key = parse_seq(since)
        try:
            info = await self._redis.xinfo_stream(self._key(channel))
        except ResponseError:  # no such stream: nothing kept, whatever there was
            return Resume([], gap=True), await self._latest(channel)
        last = _text(info.get("last-generated-id", "0-0"))
        dropped = _text(info.get("max-deleted-entry-id", "0-0"))
        # A seq this channel gave and still knows: a kept entry's, or the last deleted
        # one's (everything after it is kept). Anything else is a gap.
        known = since == dropped or (
            since_key is not None
            and bool(await self._redis.xrange(self._key(channel), min=since, max=since))
        )
        if not known:
            return Resume([], gap=True), last
        replay: list[Frame] = []
        start = f"({since}"
        while True:
            entries = await self._redis.xrange(
                self._key(channel), min=start, max="+", count=READ_BATCH
            )
            replay.extend(self._frame(channel, entry) for entry in entries)
            if len(entries) < READ_BATCH:
                break
            start = f"({_text(entries[-1][0])}"
        return Resume(replay, gap=False), replay[-1].seq if replay else since

    def _frame(self, channel: str, entry: Any) -> Frame:
        entry_id, fields = entry
        seq = _text(entry_id)
        payload = fields.get(b"p", fields.get("p", b"{}"))
        if isinstance(payload, str):
            payload = payload.encode()
        return Frame(channel, seq, parse_seq(seq) or (0, 0), payload)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, channel: str, outbox: Outbox, since: str | None = None
    ) -> AsyncIterator[tuple[Subscription, Resume]]:
        try:
            if since is None and channel in self._positions:
                # This process already reads the channel: live from where its reader is,
                # with no round trip (a room's 1,000th subscriber costs Redis nothing).
                resume, start = Resume([], gap=False), self._positions[channel]
            elif since is None:
                resume, start = Resume([], gap=False), await self._latest(channel)
            else:
                resume, start = await self._resume(channel, since)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(str(exc)) from exc
        subscription = Subscription(channel, outbox, parse_seq(start) or (0, 0))
        if self._fanout.add(subscription) and channel not in self._positions:
            self._positions[channel] = start
            self._wake.set()
        elif (parse_seq(self._positions.get(channel, "0-0")) or (0, 0)) > subscription.last:
            # The reader is past where this subscriber starts (it read frames published
            # before the subscriber came): those come from a replay of that span.
            try:
                await self._catch_up(subscription)
            except (RedisError, OSError) as exc:
                if self._fanout.remove(subscription):
                    self._positions.pop(channel, None)
                raise BrokerUnavailable(str(exc)) from exc
        try:
            yield subscription, resume
        finally:
            if self._fanout.remove(subscription):
                self._positions.pop(channel, None)

    async def _catch_up(self, subscription: Subscription) -> None:
        position = self._positions.get(subscription.channel, "0-0")
        entries = await self._redis.xrange(
            self._key(subscription.channel),
            min=f"({format_seq(subscription.last)}",
            max=position,
        )
        for entry in entries:
            subscription.deliver(self._frame(subscription.channel, entry))

    async def _read(self) -> None:
        while not self._closing:
            if not self._positions:
                self._wake.clear()
                await self._wake.wait()
                continue
            streams = {
                self._key(channel): position for channel, position in self._positions.items()
            }
            try:
                answer = await self._redis.xread(streams, count=READ_BATCH, block=READ_BLOCK_MS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep reading whatever happens, and say why
                log.warning("broker_read_failed", error=repr(exc))
                await asyncio.sleep(RECONNECT_DELAY_SECONDS)
                continue
            prefix_length = len(self._prefix)
            for stream, entries in answer or ():
                channel = _text(stream)[prefix_length:]
                if channel not in self._positions:
                    continue  # unsubscribed meanwhile
                for entry in entries:
                    frame = self._frame(channel, entry)
                    self._positions[channel] = frame.seq
                    self._fanout.deliver(frame)
