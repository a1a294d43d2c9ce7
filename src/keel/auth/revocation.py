"""Ended sessions, checked on every authenticated request without touching the database.

An access token names its session (`sid`). Ending a session (logout, logout-all,
password change or reset, deactivation, role change, deletion) records the sid here
before the change commits, so the token stops working on its very next request. A
record only has to outlive the longest-lived access token issued before it.

- In-process (one worker): a dict, filled at start-up from the sessions that ended
  recently, so a restart forgets nothing.
- Redis (any number of workers): one key per ended session. A marker key says the
  records were loaded; if Redis lost its data (restart without persistence), the check
  falls back to the database and reloads them. If Redis cannot be reached, the check
  asks the database: a token is never trusted blindly. After a failure, Redis is left
  alone for a few seconds (every check asks the database meanwhile), so a hung Redis
  costs one timeout per interval, not one per request; no pooled connection is held
  while Redis is waited on (the request's own connection is taken only afterwards).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection, Iterable
from datetime import timedelta

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from keel.auth import repository
from keel.core.db import Database
from keel.models.base import utcnow

log = structlog.get_logger("keel.auth.revocation")

# Seconds Redis is not asked after it failed to answer.
REDIS_BACKOFF_SECONDS = 5.0


async def _ended_recently(database: Database, within_seconds: int) -> list[tuple[uuid.UUID, float]]:
    """(sid, seconds its record must still live) for sessions ended within the window."""
    now = utcnow()
    async with database.transaction(write=False) as db:
        rows = await repository.ended_sessions(db, now - timedelta(seconds=within_seconds))
    return [
        (row["id"], within_seconds - (now - row["ended_at"]).total_seconds())
        for row in rows
        if row["ended_at"] is not None
    ]


async def _ended_in_database(database: Database, session_id: uuid.UUID) -> bool:
    async with database.transaction(write=False) as db:
        found = await repository.session_state(db, session_id)
    # A session that no longer exists (its user was deleted) has ended too.
    return found is None or found["ended_at"] is not None


class InProcessRevocations:
    def __init__(self, database: Database, ttl_seconds: int) -> None:
        self._database = database
        self._ttl = ttl_seconds
        self._ended: dict[uuid.UUID, float] = {}
        self._loaded = False

    async def load(self) -> None:
        try:
            recent = await _ended_recently(self._database, self._ttl)
        except Exception as exc:  # noqa: BLE001 - the database may be down at start-up
            # Until a load succeeds, every check asks the database.
            log.warning("revocations_not_loaded", error=repr(exc))
            return
        start = time.monotonic()
        for sid, remaining in recent:
            self._ended[sid] = start + remaining
        self._loaded = True

    async def revoke(self, session_ids: Iterable[uuid.UUID]) -> None:
        expires = time.monotonic() + self._ttl
        for sid in session_ids:
            self._ended[sid] = expires
        self._forget_expired()

    async def is_revoked(self, session_id: uuid.UUID) -> bool:
        if not self._loaded:
            await self.load()
            if not self._loaded:
                return await _ended_in_database(self._database, session_id)
        expires = self._ended.get(session_id)
        return expires is not None and expires > time.monotonic()

    async def revoked_among(self, session_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
        """Which of `session_ids` have ended (a realtime hub's periodic check)."""
        return {sid for sid in session_ids if await self.is_revoked(sid)}

    def _forget_expired(self) -> None:
        if len(self._ended) < 10_000:
            return
        now = time.monotonic()
        self._ended = {sid: at for sid, at in self._ended.items() if at > now}


class RedisRevocations:
    def __init__(
        self,
        redis: Redis,
        prefix: str,
        database: Database,
        ttl_seconds: int,
    ) -> None:
        self._redis = redis
        self._prefix = prefix + "revoked:"
        self._loaded_key = prefix + "revoked-loaded"
        self._database = database
        self._ttl = ttl_seconds
        # Monotonic time before which Redis is not asked (it failed recently).
        self._skip_redis_until = 0.0

    def _redis_resting(self) -> bool:
        return time.monotonic() < self._skip_redis_until

    def _redis_failed(self, exc: Exception, event: str) -> None:
        self._skip_redis_until = time.monotonic() + REDIS_BACKOFF_SECONDS
        log.warning(event, error=repr(exc))

    def _key(self, session_id: uuid.UUID) -> str:
        return f"{self._prefix}{session_id}"

    async def load(self) -> None:
        try:
            recent = await _ended_recently(self._database, self._ttl)
            async with self._redis.pipeline(transaction=False) as pipe:
                for sid, remaining in recent:
                    pipe.set(self._key(sid), 1, px=max(1, int(remaining * 1000)))
                pipe.set(self._loaded_key, 1)
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - Redis or the database may be down
            # Checks fall back to the database until a later load succeeds.
            log.warning("revocations_not_loaded", error=repr(exc))

    async def revoke(self, session_ids: Iterable[uuid.UUID]) -> None:
        # Raises when Redis is down: the caller's transaction then rolls back (503),
        # rather than ending a session that other workers would still accept. At once
        # while Redis rests after a failure: the transaction is not held open for it.
        if self._redis_resting():
            raise RedisConnectionError("Redis failed moments ago; not asked again yet")
        async with self._redis.pipeline(transaction=False) as pipe:
            for sid in session_ids:
                pipe.set(self._key(sid), 1, ex=self._ttl)
            await pipe.execute()

    async def revoked_among(self, session_ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
        """Which of `session_ids` have ended, in one round trip (a realtime hub's
        periodic check); none while Redis cannot be asked (the next check will)."""
        ordered = list(session_ids)
        if not ordered or self._redis_resting():
            return set()
        try:
            found = await self._redis.mget([self._key(sid) for sid in ordered])
        except (RedisError, OSError) as exc:
            self._redis_failed(exc, "revocation_sweep_skipped")
            return set()
        return {sid for sid, value in zip(ordered, found, strict=True) if value is not None}

    async def is_revoked(self, session_id: uuid.UUID) -> bool:
        if self._redis_resting():
            return await _ended_in_database(self._database, session_id)
        try:
            loaded, revoked = await self._redis.mget(self._loaded_key, self._key(session_id))
        except (RedisError, OSError) as exc:
            self._redis_failed(exc, "revocation_check_fell_back_to_database")
            return await _ended_in_database(self._database, session_id)
        if loaded is None:
            log.warning("revocations_missing_in_redis_reloading")
            await self.load()
            return await _ended_in_database(self._database, session_id)
        return revoked is not None


SessionRevocations = InProcessRevocations | RedisRevocations
