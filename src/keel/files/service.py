"""File rules: who sees and changes which file, and how bytes and rows stay in step.

Visibility is items' (a user their own files; moderators and admins read every file,
admins delete any). Bytes and rows are kept consistent in one direction: an object is
written first, under a fresh key, and a row refers to it only once the object is
complete; a request that fails after that deletes the object, and a process that dies
in between leaves an unreferenced object, which the sweep (files/sweep.py) removes. A
row is deleted first and its object after the commit, so no row ever points at bytes
that are gone, except by loss the sweep reports.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Collection
from datetime import UTC, datetime
from typing import Any

import anyio
import structlog

from keel.auth.deps import Principal
from keel.auth.permissions import Permission
from keel.core.db import Unit
from keel.core.downloads import ByteRange, primed
from keel.core.errors import (
    AppError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from keel.core.jobs import JobQueue, enqueue_after_commit
from keel.core.metrics import Metrics
from keel.core.pagination import CursorCodec, PageParams, Window, paginate
from keel.core.security.signed_links import LinkSigner
from keel.core.storage import Storage, StorageError
from keel.files import jobs, repository, upload
from keel.files.repository import FileRow
from keel.files.schemas import LinkRead

log = structlog.get_logger("keel.files")

# Objects deleted per job when a user with many files is deleted.
DELETE_BATCH = 500


class QuotaExceeded(PayloadTooLarge):
    message = "This upload would pass your storage quota"


def readable_owner(principal: Principal) -> uuid.UUID | None:
    """The owner whose files the caller may read (None: every owner's)."""
    return None if principal.can(Permission.FILES_READ_ANY) else principal.user_id


def writable_owner(principal: Principal) -> uuid.UUID | None:
    """The owner whose files the caller may delete (None: every owner's)."""
    return None if principal.can(Permission.FILES_WRITE_ANY) else principal.user_id


async def list_page(
    db: Unit, cursors: CursorCodec, principal: Principal, params: PageParams
) -> Window[Any]:
    statement, values = repository.listing(readable_owner(principal))
    return await paginate(
        db, statement, params, id_column=repository.COLUMNS.id, codec=cursors, values=values
    )


async def _found(db: Unit, file_id: uuid.UUID, owner: uuid.UUID | None) -> FileRow:
    found = await repository.find(db, file_id, owner)
    if found is None:
        raise NotFound("File not found")
    return found


async def get(db: Unit, principal: Principal, file_id: uuid.UUID) -> FileRow:
    return await _found(db, file_id, readable_owner(principal))


async def get_any(db: Unit, file_id: uuid.UUID) -> FileRow:
    """A file by id alone, for a signed link (the signature stands for the caller)."""
    return await _found(db, file_id, None)


def _refusal_reason(error: BaseException) -> str:
    if isinstance(error, PayloadTooLarge):
        return "too_large"
    if isinstance(error, UnsupportedMediaType):
        return "type"
    if isinstance(error, upload.UploadAbandoned | anyio.get_cancelled_exc_class()):
        return "aborted"
    if isinstance(error, StorageError):
        return "storage"
    if isinstance(error, ValidationFailed | AppError):
        return "invalid"
    return "error"


async def receive(
    body: AsyncIterator[bytes],
    content_type: str | None,
    content_length: int | None,
    storage: Storage,
    metrics: Metrics,
    *,
    max_bytes: int,
    allowed: Collection[str],
) -> upload.Received:
    """Stream the upload into storage (no row yet); every refusal is counted."""
    try:
        return await upload.receive(
            body, content_type, content_length, storage, max_bytes=max_bytes, allowed=allowed
        )
    except BaseException as exc:
        metrics.file_uploads_refused.labels(_refusal_reason(exc)).inc()
        raise


def fingerprint(received: upload.Received) -> str:
    """What makes two uploads the same request, for `Idempotency-Key`."""
    parts = (received.sha256, received.filename, received.declared_type or "")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


async def _delete_object(storage: Storage, key: str) -> None:
    try:
        await storage.delete(key)
    except StorageError:
        # Unreferenced now: the sweep removes it later.
        log.warning("file_object_delete_failed", storage_key=key, exc_info=True)


@contextlib.asynccontextmanager
async def kept_if_committed(
    db: Unit, storage: Storage, metrics: Metrics, received: upload.Received
) -> AsyncIterator[None]:
    """The received object stays only if what follows succeeds and the request's
    transaction commits; otherwise it is deleted (and counted as refused)."""

    async def discard() -> None:
        await _delete_object(storage, received.key)

    async def counted() -> None:
        metrics.file_bytes_uploaded.inc(received.size)

    db.after_rollback(discard)
    db.after_commit(counted)
    try:
        yield
    except BaseException as exc:
        # An early answer (an idempotent replay) commits without this file's row.
        metrics.file_uploads_refused.labels(
            "quota" if isinstance(exc, QuotaExceeded) else _refusal_reason(exc)
        ).inc()
        with anyio.CancelScope(shield=True):
            await discard()
        raise


async def record(
    db: Unit, principal: Principal, received: upload.Received, quota: int | None
) -> FileRow:
    """The row for a received object, within the owner's quota (413 past it)."""
    if not await repository.grow_usage(db, principal.user_id, received.size, quota):
        raise QuotaExceeded(
            f"This upload ({received.size} bytes) would pass your storage quota of {quota} bytes"
        )
    return await repository.add(
        db,
        {
            "owner_id": principal.user_id,
            "filename": received.filename,
            "content_type": received.content_type,
            "size": received.size,
            "sha256": received.sha256,
            "storage_key": received.key,
        },
    )


async def remove(db: Unit, storage: Storage, principal: Principal, file_id: uuid.UUID) -> None:
    """Delete the row now and the bytes once that has committed."""
    removed = await repository.remove(db, file_id, writable_owner(principal))
    if removed is None:
        await get(db, principal, file_id)  # 404 when the caller cannot see it
        raise Forbidden("Only the owner or an admin may delete this file")
    await repository.shrink_usage(db, removed["owner_id"], removed["size"])

    async def delete_bytes() -> None:
        await _delete_object(storage, removed["storage_key"])

    db.after_commit(delete_bytes)


async def forget_owner(db: Unit, queue: JobQueue, owner: uuid.UUID) -> None:
    """Before a user is deleted (their rows go with them): their files' bytes are
    deleted by jobs after the commit, so a slow store never slows the request."""
    keys = await repository.keys_of_owner(db, owner)
    for start in range(0, len(keys), DELETE_BATCH):
        batch = keys[start : start + DELETE_BATCH]
        enqueue_after_commit(db, queue, jobs.delete_objects.call(keys=batch))


async def content(
    storage: Storage, found: FileRow, byte_range: ByteRange | None
) -> AsyncIterator[bytes]:
    """The file's bytes (or one range), primed: a missing object is 404 before any
    status is sent."""
    start, end = (0, None) if byte_range is None else (byte_range.start, byte_range.end)
    if found["size"] == 0:
        return _empty()
    try:
        return await primed(storage.read(found["storage_key"], start, end))
    except FileNotFoundError:
        pass
    # Data loss, for an operator to see (the sweep reports it too); the client gets 404.
    log.error("file_object_missing", file_id=str(found["id"]), storage_key=found["storage_key"])
    raise NotFound("The file's content is missing")


async def _empty() -> AsyncIterator[bytes]:
    return
    yield  # pragma: no cover - makes this an (empty) async generator


def link(signer: LinkSigner, found: FileRow, expires_in: int, download_url: str) -> LinkRead:
    """A URL that downloads `found` without credentials for `expires_in` seconds,
    signed by Keel on every backend (`download_url` is the signed-download route's
    absolute URL for this file): Keel checks it, so an expired or altered link is 403
    and a deleted file's 404 whatever the store would have said."""
    expires = math.ceil(time.time()) + expires_in
    signature = signer.sign(str(found["id"]), expires)
    return LinkRead(
        url=f"{download_url}?expires={expires}&signature={signature}",
        expires_at=datetime.fromtimestamp(expires, UTC),
    )


async def presigned(storage: Storage, found: FileRow, expires: int) -> str | None:
    """The store's own URL for the bytes, valid no longer than the link it serves
    (None for a store that cannot presign: Keel streams the bytes itself)."""
    return await storage.presigned_url(
        found["storage_key"],
        filename=found["filename"],
        content_type=found["content_type"],
        expires_in=max(1, expires - math.ceil(time.time())),
    )


def check_link(signer: LinkSigner, file_id: uuid.UUID, expires: int, signature: str) -> None:
    if not signer.valid(str(file_id), expires, signature):
        raise Forbidden("This link has expired or is not valid")
