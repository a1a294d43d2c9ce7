"""Idempotency-Key (API.md): a retried POST replays the first response, creating nothing.

A route declares it once, `dependencies=[Depends(idempotent("POST /api/v1/items"))]`,
and returns its schema as usual:

- The key is claimed in a transaction of its own before the endpoint runs: a unique
  (user, scope, key) row, in flight.
- The first request's serialised response is stored in that row inside the request's
  own transaction (a response hook of the route class), so the record completes exactly
  when the change commits. Only successful responses are stored.
- A retry with the same body replays the stored status, body and headers; with another
  body it is 422 `IDEMPOTENCY_KEY_REUSED`; while the first is still running, 409.
- A request that fails releases its claim, so the client may try again; a claim whose
  process died is taken over after `IN_FLIGHT_TIMEOUT`. Records expire after 24 hours
  and are purged by a periodic job.

A body that cannot be read before the endpoint runs (an upload, streamed to storage)
has no fingerprint up front: such a route takes the `IdempotencyKey` header and calls
`honour_key` itself once it knows one (files hash the uploaded bytes).
"""

from keel.idempotency.http import REPLAYED_HEADER, IdempotencyKey, honour_key, idempotent
from keel.idempotency.jobs import purge_expired_records
from keel.idempotency.service import (
    IN_FLIGHT_TIMEOUT,
    RETENTION,
    Claim,
    IdempotencyKeyReused,
    claim,
    release,
    request_hash,
)

__all__ = [
    "IN_FLIGHT_TIMEOUT",
    "REPLAYED_HEADER",
    "RETENTION",
    "Claim",
    "IdempotencyKey",
    "IdempotencyKeyReused",
    "claim",
    "honour_key",
    "idempotent",
    "purge_expired_records",
    "release",
    "request_hash",
]
