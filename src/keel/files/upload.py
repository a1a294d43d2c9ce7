"""An upload, streamed from the request body straight into storage.

The multipart body is parsed as it arrives (python-multipart's push parser, never
`request.form()` or a spooled copy): the `file` part's bytes are counted against the
limit, checked for their type, hashed and written to storage in batches, so memory
holds two batches whatever the file's size: one being received while the one before is
hashed and written (on two threads at once). The limit is enforced as the bytes arrive:
past it, reading stops and the answer is 413 at once. On any failure, the client
leaving included, the object being written is aborted: nothing is left under its key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect

from keel.core.errors import (
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from keel.core.ids import uuid7
from keel.core.storage import Storage
from keel.files.detect import ContentCheck
from keel.files.names import safe_filename

FIELD = "file"
# Written (and hashed) in batches of this much: thread hops per batch, not per chunk.
BATCH_BYTES = 1024 * 1024
# What the multipart envelope and any other fields may add to the file's own bytes.
ENVELOPE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Received:
    """An upload stored under `key` (not yet referenced by any row)."""

    key: str
    filename: str
    declared_type: str | None
    content_type: str
    size: int
    sha256: str


class UploadTooLarge(PayloadTooLarge):
    def __init__(self, limit: int) -> None:
        # The body is left unread: the connection cannot be reused.
        super().__init__(
            f"The file is larger than the upload limit of {limit} bytes",
            headers={"Connection": "close"},
        )


class UploadAbandoned(BadRequest):
    """The client went away mid-body: nobody reads this answer, but the request's log
    line says what happened (a 400, not an unhandled error)."""

    message = "The connection closed before the upload ended"


def _missing_file() -> ValidationFailed:
    return ValidationFailed(
        "A multipart field named 'file' is required",
        details=[{"loc": ["body", FIELD], "msg": "Field required", "type": "missing"}],
    )


def boundary_of(content_type: str | None) -> bytes:
    media_type, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if media_type != b"multipart/form-data" or not boundary:
        raise UnsupportedMediaType("Uploads must be multipart/form-data with a boundary")
    return boundary


class _Events:
    """python-multipart calls back synchronously; the events are queued here and acted
    on (asynchronously: storage writes) after each chunk is parsed."""

    def __init__(self) -> None:
        self.queue: list[tuple[str, bytes]] = []
        self._header_name = b""
        self._header_value = b""

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": lambda: self.queue.append(("begin", b"")),
            "on_header_field": self._field,
            "on_header_value": self._value,
            "on_header_end": self._header_end,
            "on_headers_finished": lambda: self.queue.append(("headers", b"")),
            "on_part_data": lambda data, start, end: self.queue.append(
                # The chunk itself when the part spans it (no copy), else the slice.
                ("data", data if start == 0 and end == len(data) else data[start:end])
            ),
            "on_part_end": lambda: self.queue.append(("end", b"")),
        }

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self.queue.append(("header", self._header_name + b"\0" + self._header_value))
        self._header_name = self._header_value = b""


class _Receiver:
    def __init__(self, storage: Storage, max_bytes: int, allowed: Collection[str]) -> None:
        self.storage = storage
        self.max_bytes = max_bytes
        self.allowed = allowed
        self.key = uuid7().hex
        self.writer = storage.writer(self.key)
        self.hasher = hashlib.sha256()
        self.in_flight: asyncio.Future[None] | None = None
        self.size = 0
        self.other_bytes = 0
        self.batch: list[bytes] = []
        self.batch_bytes = 0
        self.in_file = False
        self.done = False
        self.headers: dict[str, bytes] = {}
        self.filename: str | None = None
        self.declared: str | None = None
        self.check: ContentCheck | None = None

    async def on(self, kind: str, data: bytes) -> None:
        if kind == "begin":
            self.headers = {}
        elif kind == "header":
            name, _, value = data.partition(b"\0")
            self.headers[name.decode("latin-1").lower()] = value
        elif kind == "headers":
            self._start_part()
        elif kind == "data":
            await self._data(data)
        elif kind == "end" and self.in_file:
            self.in_file = False
            self.done = True

    def _start_part(self) -> None:
        # Header values stay bytes: browsers send a file name as raw UTF-8.
        _kind, options = parse_options_header(self.headers.get("content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name != FIELD or self.done or self.check is not None:
            return
        raw_filename = options.get(b"filename")
        # python-multipart keeps the header's bytes; browsers send UTF-8 there.
        self.filename = raw_filename.decode("utf-8", "replace") if raw_filename else None
        declared = self.headers.get("content-type")
        self.declared = declared.decode("latin-1") if declared is not None else None
        self.check = ContentCheck(self.declared, self.allowed)
        self.in_file = True

    async def _data(self, data: bytes) -> None:
        if not self.in_file:
            self.other_bytes += len(data)
            if self.other_bytes > ENVELOPE_BYTES:
                raise PayloadTooLarge(
                    "Fields other than 'file' are too large", headers={"Connection": "close"}
                )
            return
        self.size += len(data)
        if self.size > self.max_bytes:
            raise UploadTooLarge(self.max_bytes)
        assert self.check is not None  # noqa: S101 - set with in_file
        self.check.feed(data)
        self.batch.append(data)
        self.batch_bytes += len(data)
        if self.batch_bytes >= BATCH_BYTES:
            await self.flush()

    def finish(self) -> str:
        """The stored type, once the body has ended; 422 when it held no file."""
        if self.check is None or not self.done:
            raise _missing_file()
        return self.check.finish()

    async def flush(self) -> None:
        """Hand the batch on; it is hashed and stored while the next one is received.
        One batch at a time is in flight: memory stays at about two batches."""
        await self.settle()
        if not self.batch:
            return
        batch, self.batch, self.batch_bytes = self.batch, [], 0
        self.in_flight = asyncio.ensure_future(self._store(batch))

    async def settle(self) -> None:
        """Wait for the batch in flight (its failure is raised here)."""
        in_flight, self.in_flight = self.in_flight, None
        if in_flight is not None:
            await in_flight

    async def _store(self, batch: list[bytes]) -> None:
        # Hashing is CPU work (off the event loop, DESIGN.md); the hash and the write
        # run on two threads at once.
        await asyncio.gather(
            anyio.to_thread.run_sync(_hash_into, self.hasher, batch), self.writer.write(batch)
        )

    async def discard(self) -> None:
        """After a failure: let the batch in flight end, then forget the object."""
        if self.in_flight is not None:
            with contextlib.suppress(Exception):
                await self.in_flight
            self.in_flight = None
        await self.writer.abort()


def _hash_into(hasher: Any, chunks: list[bytes]) -> None:
    for chunk in chunks:
        hasher.update(chunk)


async def receive(
    body: AsyncIterator[bytes],
    content_type: str | None,
    content_length: int | None,
    storage: Storage,
    *,
    max_bytes: int,
    allowed: Collection[str],
) -> Received:
    """Stream a multipart body's `file` part into storage, under a new key."""
    boundary = boundary_of(content_type)
    if content_length is not None and content_length > max_bytes + ENVELOPE_BYTES:
        raise UploadTooLarge(max_bytes)  # said so up front: not a byte is read
    receiver = _Receiver(storage, max_bytes, allowed)
    events = _Events()
    parser = MultipartParser(boundary, events.callbacks())  # type: ignore[arg-type]
    try:
        try:
            async for chunk in body:
                try:
                    parser.write(chunk)
                except MultipartParseError:
                    raise BadRequest("The multipart body is malformed") from None
                queued, events.queue = events.queue, []
                for kind, data in queued:
                    await receiver.on(kind, data)
        except ClientDisconnect:
            raise UploadAbandoned from None
        parser.finalize()
        content_type_found = receiver.finish()
        await receiver.flush()
        await receiver.settle()
        await receiver.writer.commit()
    except BaseException:
        # Shielded: a cancelled request (the client gone, a shutdown) still cleans up.
        with anyio.CancelScope(shield=True):
            await receiver.discard()
        raise
    return Received(
        key=receiver.key,
        filename=safe_filename(receiver.filename),
        declared_type=receiver.declared,
        content_type=content_type_found,
        size=receiver.size,
        sha256=receiver.hasher.hexdigest(),
    )
