"""File routes (API.md, "Files"): uploads streamed to storage, downloads streamed from
it, with ranges, conditional requests and signed links.

HTTP only, as items' router: parse, call the service, shape the answer. An upload's
body is not a parameter: it is read as a stream by the service, after the credential
check, and with no pooled database connection held while it arrives.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import RedirectResponse

from keel.auth.deps import CurrentPrincipal
from keel.core.client_ip import request_client_ip
from keel.core.conditional import none_match
from keel.core.db import AppDatabase, DbSession
from keel.core.deps import AppMetrics, AppSettings, Cursors, Links, Storage, Transfers
from keel.core.downloads import download_response, requested_range
from keel.core.pagination import Page
from keel.core.routing import KeelRoute
from keel.core.transfers import TransferSlots, within_receive_timeout
from keel.files import service
from keel.files.deps import FileDep, FilePage
from keel.files.repository import FileRow
from keel.files.schemas import FileRead, LinkRead, LinkRequest
from keel.idempotency import IdempotencyKey, honour_key
from keel.idempotency.http import check_key

PREFIX = "/api/v1/files"
router = APIRouter(prefix=PREFIX, tags=["files"], route_class=KeelRoute)

_MULTIPART_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}
_BYTES = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
_STRONG_ETAG = {
    "ETag": {
        "description": "The sha256 of the bytes, quoted.",
        "required": True,
        "schema": {"type": "string"},
    }
}
_CONTENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": _BYTES,
        "description": "The whole file (also when several ranges are asked for).",
        "headers": _STRONG_ETAG,
    },
    206: {
        "content": _BYTES,
        "description": "The one range asked for, with `Content-Range`.",
        "headers": _STRONG_ETAG,
    },
    304: {"description": "`If-None-Match` holds the file's ETag.", "headers": _STRONG_ETAG},
    404: {"description": "No such file, or not the caller's"},
    416: {"description": "The range starts past the end: `Content-Range: bytes */<size>`."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such file, or not the caller's"}
}

RangeHeader = Annotated[str | None, Header(alias="Range", description="One `bytes=` range.")]
IfNoneMatch = Annotated[str | None, Header(alias="If-None-Match")]
IfRange = Annotated[
    str | None, Header(alias="If-Range", description="Send the range only if this ETag holds.")
]


@router.get("", response_model=Page[FileRead], operation_id="files-list")
async def list_files(
    principal: CurrentPrincipal, db: DbSession, cursors: Cursors, params: FilePage
) -> Any:
    """The files the caller may read: a user their own, moderators and admins every file."""
    window = await service.list_page(db, cursors, principal, params)
    return window.as_page()


@router.post(
    "",
    status_code=201,
    response_model=FileRead,
    operation_id="files-upload",
    openapi_extra=_MULTIPART_BODY,
    responses={
        201: {
            "headers": {
                "Location": {
                    "description": "The new file.",
                    "required": True,
                    "schema": {"type": "string"},
                }
            }
        },
        400: {"description": "The multipart body is malformed"},
        409: {"description": "The first request with this Idempotency-Key is still running"},
        413: {"description": "Past the upload limit, or the caller's storage quota"},
        415: {"description": "A type not allowed, or one the content contradicts"},
        422: {
            "description": "No `file` field, a bad Idempotency-Key, or one reused with another file"
        },
    },
)
async def upload_file(
    request: Request,
    response: Response,
    principal: CurrentPrincipal,
    db: DbSession,
    database: AppDatabase,
    storage: Storage,
    settings: AppSettings,
    metrics: AppMetrics,
    transfers: Transfers,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Upload a file (multipart field `file`), streamed to storage as it arrives."""
    if idempotency_key is not None:
        check_key(idempotency_key)  # 422 before a byte of the body is read
    # Whatever the credential check ran ends here: the body may take minutes to
    # arrive, and must not hold a pooled connection (or a transaction) meanwhile.
    await db.commit()
    length = request.headers.get("content-length")
    slot = transfers.take(principal.user_id)  # a slow sender holds one of its own slots
    try:
        received = await service.receive(
            within_receive_timeout(request.stream(), settings.http.receive_timeout_seconds),
            request.headers.get("content-type"),
            int(length) if length and length.isdigit() else None,
            storage,
            metrics,
            max_bytes=settings.max_upload_bytes,
            allowed=settings.storage.allowed_types,
        )
    finally:
        slot.release()
    async with service.kept_if_committed(db, storage, metrics, received):
        if idempotency_key is not None:
            fingerprint = service.fingerprint(received)
            await honour_key(
                request, principal, database, db, f"POST {PREFIX}", idempotency_key, fingerprint
            )
        stored = await service.record(
            db, principal, received, settings.storage.quota_bytes_per_user
        )
    response.headers["Location"] = f"{PREFIX}/{stored['id']}"
    return stored


@router.get(
    "/{file_id}",  # noqa: FAST003 - FileDep reads file_id
    response_model=FileRead,
    operation_id="files-get",
    responses=_NOT_FOUND,
)
async def read_file(found: FileDep) -> Any:
    """One file's metadata."""
    return found


@dataclass(frozen=True, slots=True)
class _Sending:
    """What sending a file's bytes needs besides the file: the byte source, metrics,
    and the transfer bounds (the caller's slot, the send timeout)."""

    storage: Storage
    metrics: AppMetrics
    transfers: TransferSlots
    settings: AppSettings
    # Whose transfer it is: the caller's user id, or a link user's address.
    owner: object


async def _send(
    found: FileRow,
    sending: _Sending,
    range_header: str | None,
    if_none_match: str | None,
    if_range: str | None,
) -> Response:
    etag = f'"{found["sha256"]}"'
    if none_match(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    if if_range is not None and if_range.strip() != etag:
        range_header = None  # the client's copy is stale: the whole file, not a piece
    byte_range = requested_range(range_header, found["size"])
    slot = sending.transfers.take(sending.owner)
    try:
        chunks = await service.content(sending.storage, found, byte_range)
    except BaseException:
        slot.release()
        raise
    return download_response(
        chunks,
        size=found["size"],
        content_type=found["content_type"],
        filename=found["filename"],
        etag=etag,
        byte_range=byte_range,
        slot=slot,
        send_timeout=sending.settings.http.send_timeout_seconds,
        counted=sending.metrics.file_bytes_downloaded.inc,
    )


@router.get(
    "/{file_id}/content",  # noqa: FAST003 - FileDep reads file_id
    response_class=Response,
    operation_id="files-content",
    responses=_CONTENT_RESPONSES,
)
async def download_file(
    found: FileDep,
    principal: CurrentPrincipal,
    storage: Storage,
    metrics: AppMetrics,
    transfers: Transfers,
    settings: AppSettings,
    range_header: RangeHeader = None,
    if_none_match: IfNoneMatch = None,
    if_range: IfRange = None,
) -> Response:
    """The file's bytes, streamed; one `Range` gives 206."""
    sending = _Sending(storage, metrics, transfers, settings, principal.user_id)
    return await _send(found, sending, range_header, if_none_match, if_range)


@router.get(
    "/{file_id}/download",
    response_class=Response,
    operation_id="files-download",
    responses={
        **_CONTENT_RESPONSES,
        307: {
            "description": "On S3: to the store's presigned URL for the bytes",
            "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
        },
        403: {"description": "The link has expired, or was altered"},
        404: {"description": "The file has been deleted"},
    },
)
async def download_by_link(
    request: Request,
    file_id: uuid.UUID,
    db: DbSession,
    storage: Storage,
    links: Links,
    metrics: AppMetrics,
    transfers: Transfers,
    settings: AppSettings,
    expires: Annotated[int, Query(description="Unix time the link expires at.")],
    signature: Annotated[str, Query(max_length=128, description="The link's signature.")],
    range_header: RangeHeader = None,
    if_none_match: IfNoneMatch = None,
    if_range: IfRange = None,
) -> Response:
    """The file's bytes through a signed link (from `POST /{id}/link`): no credentials.
    On S3 the answer is a redirect to the store's own presigned URL."""
    service.check_link(links, file_id, expires, signature)
    found = await service.get_any(db, file_id)
    direct = await service.presigned(storage, found, expires)
    if direct is not None:
        return RedirectResponse(direct, status_code=307)
    # No caller to count against: a link's transfers count against the client's address.
    sending = _Sending(storage, metrics, transfers, settings, f"ip:{request_client_ip(request)}")
    return await _send(found, sending, range_header, if_none_match, if_range)


@router.post(
    "/{file_id}/link",  # noqa: FAST003 - FileDep reads file_id
    response_model=LinkRead,
    operation_id="files-link",
    responses=_NOT_FOUND,
)
async def link_file(
    found: FileDep,
    links: Links,
    settings: AppSettings,
    body: LinkRequest | None = None,
) -> Any:
    """A URL that downloads the file without credentials until it expires."""
    expires_in = (body or LinkRequest()).expires_in
    download_url = f"{settings.public_base_url}{PREFIX}/{found['id']}/download"
    return service.link(links, found, expires_in, download_url)


@router.delete(
    "/{file_id}",
    status_code=204,
    operation_id="files-delete",
    responses={
        403: {"description": "A moderator deleting someone else's file"},
        404: {"description": "No such file, or not the caller's"},
    },
)
async def delete_file(
    file_id: uuid.UUID, principal: CurrentPrincipal, db: DbSession, storage: Storage
) -> None:
    """Delete the file; its stored bytes go too."""
    await service.remove(db, storage, principal, file_id)
