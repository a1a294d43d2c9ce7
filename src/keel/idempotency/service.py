"""The rules of a key: claim it, or say what the earlier request with it gave."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import timedelta

import orjson
import structlog
from sqlalchemy.exc import IntegrityError

from keel.core.db import Database
from keel.core.errors import AppError, Conflict
from keel.idempotency import repository
from keel.idempotency.repository import RecordRow
from keel.models.base import utcnow

log = structlog.get_logger("keel.idempotency")

RETENTION = timedelta(hours=24)
# A claim older than this with no response belongs to a request that died.
IN_FLIGHT_TIMEOUT = timedelta(minutes=1)


class IdempotencyKeyReused(AppError):
    status_code, code, message = (
        422,
        "IDEMPOTENCY_KEY_REUSED",
        "This Idempotency-Key was used with another request body",
    )


@dataclass(frozen=True, slots=True)
class Claim:
    """A key claimed for this request (`record_id`), or the response to replay."""

    record_id: uuid.UUID | None = None
    replay: RecordRow | None = None


def request_hash(body: bytes) -> str:
    """The body's fingerprint: JSON compared by content (key order and spacing aside)."""
    try:
        canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError:
        canonical = body
    return hashlib.sha256(canonical).hexdigest()


async def claim(
    database: Database, user_id: uuid.UUID, scope: str, key: str, body_hash: str
) -> Claim:
    """Claim the key in a transaction of its own, or say what the earlier request gave."""
    for _attempt in range(2):
        now = utcnow()
        try:
            async with database.transaction() as db:
                record_id = await repository.add(
                    db, user_id, scope, key, body_hash, now, now + RETENTION
                )
        except IntegrityError:
            pass
        else:
            return Claim(record_id=record_id)

        async with database.transaction() as db:
            existing = await repository.find(db, user_id, scope, key)
            if existing is None:
                continue  # released between our insert and this read: claim again
            abandoned = existing["status_code"] is None and existing["created_at"] < (
                now - IN_FLIGHT_TIMEOUT
            )
            if existing["expires_at"] <= now or abandoned:
                # Take it over: delete exactly that record (a racing taker-over loses).
                await repository.remove(db, existing["id"])
                continue
        if existing["request_hash"] != body_hash:
            raise IdempotencyKeyReused
        if existing["status_code"] is None:
            raise Conflict("A request with this Idempotency-Key is still in progress")
        return Claim(replay=existing)
    raise Conflict("A request with this Idempotency-Key is still in progress")


async def release(database: Database, record_id: uuid.UUID) -> None:
    """Forget a claim whose request failed, so the client can try again."""
    try:
        async with database.transaction() as db:
            await repository.remove(db, record_id, only_in_flight=True)
    except Exception:  # the claim then times out instead
        log.exception("idempotency_release_failed", record_id=str(record_id))
