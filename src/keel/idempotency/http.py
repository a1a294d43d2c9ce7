"""The `Idempotency-Key` header as a route dependency: claim, replay, store."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Header, Request, Response

from keel.auth.deps import CurrentPrincipal, Principal
from keel.core.db import AppDatabase, Database, DbSession, Unit
from keel.core.errors import ValidationFailed
from keel.core.openapi import answers
from keel.core.routing import Answer, on_response
from keel.idempotency import repository, service
from keel.idempotency.repository import RecordRow

_KEY = re.compile(r"[!-~]{1,255}")
REPLAYED_HEADER = "Idempotent-Replayed"
# Headers a replay writes afresh rather than copying from the stored response.
_REPLAY_SETS_ITSELF = frozenset({"content-length", "content-type"})


def check_key(key: str) -> None:
    if not _KEY.fullmatch(key):
        problem = "Idempotency-Key must be 1 to 255 visible ASCII characters"
        raise ValidationFailed(
            problem,
            details=[{"loc": ["header", "Idempotency-Key"], "msg": problem, "type": "value_error"}],
        )


def _replay(record: RecordRow) -> Response:
    headers = dict(record["response_headers"] or {})
    headers[REPLAYED_HEADER] = "true"
    return Response(
        content=record["response_body"] or "",
        status_code=record["status_code"] or 200,
        headers=headers,
        media_type="application/json",
    )


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Retry safely: the same key and body replay the first response.",
        # Checked by check_key (a 422 in the details API.md gives), documented here.
        json_schema_extra={"pattern": f"^{_KEY.pattern}$", "minLength": 1, "maxLength": 255},
    ),
]


async def honour_key(
    request: Request,
    principal: Principal,
    database: Database,
    db: Unit,
    scope: str,
    key: str,
    body_hash: str,
) -> None:
    """Claim `key` for this request, or answer as the first request with it did
    (raises `Answer` with the replay, or 409/422). Once claimed, the response is stored
    in the request's transaction; a request that fails frees the key."""
    check_key(key)
    claimed = await service.claim(database, principal.user_id, scope, key, body_hash)
    if claimed.replay is not None:
        raise Answer(_replay(claimed.replay))
    record_id = claimed.record_id
    assert record_id is not None  # noqa: S101 - a claim is a record or a replay
    stored = False

    async def store(response: Response) -> None:
        # In the request's transaction: the record completes exactly when the change
        # commits. Only a success is worth replaying.
        nonlocal stored
        if response.status_code >= 400:
            return
        headers = {
            name: value
            for name, value in response.headers.items()
            if name not in _REPLAY_SETS_ITSELF
        }
        await repository.complete(
            db, record_id, response.status_code, bytes(response.body).decode(), headers
        )
        stored = True

    # Freed once the request's own transaction has ended without storing a response
    # (after its rollback, so it never waits on the request's locks).
    async def free_claim() -> None:
        await service.release(database, record_id)

    async def free_unless_stored() -> None:
        if not stored:
            await service.release(database, record_id)

    on_response(request, store)
    db.after_rollback(free_claim)
    db.after_commit(free_unless_stored)


def idempotent(scope: str) -> Callable[..., Awaitable[None]]:
    """A dependency honouring `Idempotency-Key` for one JSON endpoint (`scope` names
    it); the body's fingerprint is its JSON, compared by content."""

    @answers(409)  # the first request with this key is still running
    async def dependency(
        request: Request,
        principal: CurrentPrincipal,
        database: AppDatabase,
        db: DbSession,
        idempotency_key: IdempotencyKey = None,
    ) -> None:
        if idempotency_key is None:
            return
        check_key(idempotency_key)
        body_hash = service.request_hash(await request.body())
        await honour_key(request, principal, database, db, scope, idempotency_key, body_hash)

    return dependency
