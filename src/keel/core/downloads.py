"""Serving stored bytes over HTTP: one byte range (RFC 9110 §14), a safe
`Content-Disposition` (RFC 6266 with RFC 5987's `filename*`), and a streamed response
whose memory stays flat however large the file.

A `Range` header this module cannot honour exactly is ignored, as RFC 9110 allows, and
the whole file is sent: several ranges (API.md), another unit, or a malformed value.
Only a well-formed single range that starts past the end is 416.
"""

from __future__ import annotations

import re
import unicodedata
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from keel.core.errors import RangeNotSatisfiable
from keel.core.transfers import Slot, TransferResponse

_RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.ASCII)
# Types that a browser would run or render as a page: never sent as such.
_ACTIVE_TYPES = frozenset({"text/html", "application/xhtml+xml", "image/svg+xml", "text/xml"})


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(
        f"The range starts past the end of the file ({size} bytes)",
        headers={"Content-Range": f"bytes */{size}"},
    )


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def requested_range(header: str | None, size: int) -> ByteRange | None:
    """The one range a `Range` header asks for, clipped to the file; None for the whole
    file. Raises RangeNotSatisfiable for a single range wholly past the end."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip().replace(" ", ""))
    if match is None:  # several ranges, another unit, or not a range at all
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # a suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(size)
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise _unsatisfiable(size)
    end = int(last) if last else size - 1
    return ByteRange(start, min(end, size - 1))


def _ascii_fallback(filename: str) -> str:
    decomposed = unicodedata.normalize("NFKD", filename)
    ascii_only = decomposed.encode("ascii", "ignore").decode("ascii")
    cleaned = "".join(
        char if char.isprintable() and char not in '"\\;' else "_" for char in ascii_only
    )
    return cleaned.strip() or "file"


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """`attachment; filename="<ASCII>"; filename*=UTF-8''<percent-encoded>` (RFC 6266):
    every browser gets a name it can use, and none of it can break out of the header."""
    quoted = urllib.parse.quote(filename, safe="")
    return f"{disposition}; filename=\"{_ascii_fallback(filename)}\"; filename*=UTF-8''{quoted}"


def served_type(content_type: str) -> str:
    """The `Content-Type` a stored file is sent with: text as UTF-8, and nothing a
    browser would render as a page."""
    if content_type in _ACTIVE_TYPES:
        return "application/octet-stream"
    if content_type.startswith("text/") or content_type == "application/json":
        return f"{content_type}; charset=utf-8"
    return content_type


async def primed(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`chunks` with its first chunk already read: a missing object or an unreachable
    store fails here, before a status line is sent, not halfway through a 200."""
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = b""

    async def rest() -> AsyncIterator[bytes]:
        if first:
            yield first
        async for chunk in chunks:
            yield chunk

    return rest()


def download_response(
    chunks: AsyncIterator[bytes],
    *,
    size: int,
    content_type: str,
    filename: str,
    etag: str,
    byte_range: ByteRange | None,
    slot: Slot,
    send_timeout: float,
    counted: Callable[[int], None] | None = None,
) -> TransferResponse:
    """The file's bytes (or the range of them that `chunks` yields, primed) as a
    streamed response; `counted` is told how many bytes were sent. The response holds
    `slot` while it streams, and drops a client that reads nothing for `send_timeout`
    seconds (core/transfers.py); no database connection is held meanwhile."""
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": etag,
        "Content-Disposition": content_disposition(filename),
        # Nothing in the file may run, even if a browser were told to render it
        # (`nosniff` is on every response, from the security headers middleware), and
        # no other site may frame it (ASVS V3.4.6: frame-ancestors on every response).
        "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; sandbox",
        # The bytes are exactly what the ETag and ranges describe: no proxy (nor Keel's
        # own compression) may transform them.
        "Cache-Control": "private, no-cache, no-transform",
    }
    if byte_range is None:
        status = 200
        headers["Content-Length"] = str(size)
    else:
        status = 206
        headers["Content-Length"] = str(byte_range.length)
        headers["Content-Range"] = f"bytes {byte_range.start}-{byte_range.end}/{size}"

    async def body() -> AsyncIterator[bytes]:
        async for chunk in chunks:
            if counted is not None:
                counted(len(chunk))
            yield chunk

    return TransferResponse(
        body(),
        slot=slot,
        send_timeout=send_timeout,
        status_code=status,
        headers=headers,
        media_type=served_type(content_type),
    )
