"""Idempotency-Key (API.md): a retried POST replays the first response, creating nothing.

    Idempotency = Annotated[IdempotentRequest, Depends(idempotent("POST /api/v1/items"))]

    async def create(..., idempotency: Idempotency):
        if idempotency.replay is not None:
            return idempotency.replay
        ...
        await idempotency.save(session, response)

The key is claimed in a transaction of its own before the endpoint runs: a unique
(user, scope, key) row, in flight. The first request stores its response in that row in
its own transaction, so the record completes exactly when the change commits. A retry
with the same body replays the stored status, body and headers; with another body it is
422 `IDEMPOTENCY_KEY_REUSED`; while the first is still running, 409. A request that fails
releases its claim, so the client may try again; a claim whose process died is taken
over after `IN_FLIGHT_TIMEOUT`. Records expire after 24 hours and are purged by a
periodic job. Only successful responses are stored.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

import orjson
import structlog
from fastapi import Header, Request
from fastapi.responses import Response
from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keel.auth.deps import CurrentPrincipal
from keel.core.db import DbSession, after_commit, after_rollback
from keel.core.errors import AppError, Conflict, ValidationFailed
from keel.core.jobs import JobContext, job
from keel.core.resources import resources_of
from keel.models import IdempotencyRecord
from keel.models.base import utcnow

log = structlog.get_logger("keel.idempotency")

RETENTION = timedelta(hours=24)
# A claim older than this with no response belongs to a request that died.
IN_FLIGHT_TIMEOUT = timedelta(minutes=1)
_KEY = re.compile(r"[!-~]{1,255}")
REPLAYED_HEADER = "Idempotent-Replayed"
# Headers a replay writes afresh rather than copying from the stored response.
_REPLAY_SETS_ITSELF = frozenset({"content-length", "content-type"})


class IdempotencyKeyReused(AppError):
    status_code, code, message = (
        422,
        "IDEMPOTENCY_KEY_REUSED",
        "This Idempotency-Key was used with another request body",
    )


@dataclass
class IdempotentRequest:
    """The endpoint's view of its key: a response to replay, or a claim to complete."""

    record_id: uuid.UUID | None = None
    replay: Response | None = None
    saved: bool = False

    async def save(self, session: AsyncSession, response: Response) -> None:
        """Store `response` (its status, body and own headers) in the request's
        transaction; nothing to do without a key. Call it last, once the response is
        settled: it locks the record until commit."""
        if self.record_id is None:
            return
        headers = {
            name: value
            for name, value in response.headers.items()
            if name not in _REPLAY_SETS_ITSELF
        }
        await session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.id == self.record_id)
            .values(
                status_code=response.status_code,
                response_body=bytes(response.body).decode(),
                response_headers=headers,
            )
            .execution_options(synchronize_session=False)
        )
        self.saved = True


def request_hash(body: bytes) -> str:
    """The body's fingerprint: JSON compared by content (key order and spacing aside)."""
    try:
        canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError:
        canonical = body
    return hashlib.sha256(canonical).hexdigest()


def _check_key(key: str) -> None:
    if not _KEY.fullmatch(key):
        problem = "Idempotency-Key must be 1 to 255 visible ASCII characters"
        raise ValidationFailed(
            problem,
            details=[{"loc": ["header", "Idempotency-Key"], "msg": problem, "type": "value_error"}],
        )


def _replay(record: IdempotencyRecord) -> Response:
    headers = dict(record.response_headers or {})
    headers[REPLAYED_HEADER] = "true"
    return Response(
        content=record.response_body or "",
        status_code=record.status_code or 200,
        headers=headers,
        media_type="application/json",
    )


async def claim(
    sessionmaker: async_sessionmaker[AsyncSession],
    user_id: uuid.UUID,
    scope: str,
    key: str,
    body_hash: str,
) -> IdempotentRequest:
    """Claim the key in a transaction of its own, or say what the earlier request gave."""
    for _attempt in range(2):
        now = utcnow()
        async with sessionmaker() as session:
            record = IdempotencyRecord(
                user_id=user_id,
                scope=scope,
                key=key,
                request_hash=body_hash,
                created_at=now,
                expires_at=now + RETENTION,
            )
            session.add(record)
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
            else:
                return IdempotentRequest(record_id=record.id)

            existing = await session.scalar(
                select(IdempotencyRecord).where(
                    IdempotencyRecord.user_id == user_id,
                    IdempotencyRecord.scope == scope,
                    IdempotencyRecord.key == key,
                )
            )
            if existing is None:
                continue  # released between our insert and this read: claim again
            abandoned = existing.status_code is None and existing.created_at < now - (
                IN_FLIGHT_TIMEOUT
            )
            if existing.expires_at <= now or abandoned:
                # Take it over: delete exactly that record (a racing taker-over loses).
                await session.execute(
                    delete(IdempotencyRecord).where(IdempotencyRecord.id == existing.id)
                )
                await session.commit()
                continue
            if existing.request_hash != body_hash:
                raise IdempotencyKeyReused
            if existing.status_code is None:
                raise Conflict("A request with this Idempotency-Key is still in progress")
            return IdempotentRequest(replay=_replay(existing))
    raise Conflict("A request with this Idempotency-Key is still in progress")


async def release(sessionmaker: async_sessionmaker[AsyncSession], record_id: uuid.UUID) -> None:
    """Forget a claim whose request failed, so the client can try again."""
    try:
        async with sessionmaker() as session:
            await session.execute(
                delete(IdempotencyRecord).where(
                    IdempotencyRecord.id == record_id, IdempotencyRecord.status_code.is_(None)
                )
            )
            await session.commit()
    except Exception:  # the claim then times out instead
        log.exception("idempotency_release_failed", record_id=str(record_id))


def idempotent(scope: str) -> Callable[..., Awaitable[IdempotentRequest]]:
    """A dependency honouring `Idempotency-Key` for one endpoint (`scope` names it)."""

    async def dependency(
        request: Request,
        principal: CurrentPrincipal,
        session: DbSession,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                description="Retry safely: the same key and body replay the first response.",
            ),
        ] = None,
    ) -> IdempotentRequest:
        if idempotency_key is None:
            return IdempotentRequest()
        _check_key(idempotency_key)
        sessionmaker = resources_of(request).sessionmaker
        body_hash = request_hash(await request.body())
        state = await claim(sessionmaker, principal.user_id, scope, idempotency_key, body_hash)
        record_id = state.record_id
        if record_id is None:
            return state

        # Freed once the request's own transaction has ended without storing a response
        # (after its rollback, so it never waits on the request's locks).
        async def free_claim() -> None:
            await release(sessionmaker, record_id)

        async def free_unless_saved() -> None:
            if not state.saved:
                await release(sessionmaker, record_id)

        after_rollback(session, free_claim)
        after_commit(session, free_unless_saved)
        return state

    return dependency


@job("idempotency.purge_expired", max_retries=3)
async def purge_expired_records(ctx: JobContext) -> None:
    now = utcnow()
    async with ctx.sessionmaker() as session:
        result = await session.execute(
            delete(IdempotencyRecord).where(
                or_(
                    IdempotencyRecord.expires_at < now,
                    # Claims left by requests that died and were never retried.
                    IdempotencyRecord.status_code.is_(None)
                    & (IdempotencyRecord.created_at < now - IN_FLIGHT_TIMEOUT),
                )
            )
        )
        await session.commit()
    log.info("idempotency_records_purged", count=result.rowcount)  # type: ignore[attr-defined]
