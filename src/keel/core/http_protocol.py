"""Uvicorn's HTTP protocol (httptools), with bounds on how a request's head arrives.

Uvicorn buffers a request's line and headers without limit and without a deadline:
tens of MiB of headers were accepted, a few such requests at once tripled a worker's
memory, and a client sending its headers a byte a second held its connection forever.
Here a head is refused once it passes `KEEL_HTTP_MAX_HEADER_BYTES` (431), or when it is
still incomplete `KEEL_HTTP_HEADER_TIMEOUT_SECONDS` after it began (408), before the
application sees anything. Both answers are in the one error shape, and the connection
is closed after them.

A head that arrives whole is measured exactly as it is parsed; one still arriving is
measured after each read from the socket, so it is refused within one read (at most
256 KiB) past the limit.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from typing import Any

import orjson
import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from keel.config import Settings

log = structlog.get_logger("keel.http")

# How long a refused connection is still read from before it is closed.
_LINGER_SECONDS = 2.0
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


@functools.cache
def _bounds() -> tuple[int, float]:
    # Read once per process: Uvicorn builds this protocol in each worker, by import path,
    # so the limits come from the same settings (environment, .env) as the app's.
    http = Settings().http
    return http.max_header_bytes, http.header_timeout_seconds


def _refusal(status: int, code: str, message: str) -> bytes:
    request_id = secrets.token_hex(16)
    body = orjson.dumps(
        {"error": {"code": code, "message": message, "request_id": request_id, "details": []}}
    )
    head = [
        b"HTTP/1.1 %d %s" % (status, _REASONS[status]),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"connection: close",
        b"x-content-type-options: nosniff",
        b"x-request-id: " + request_id.encode(),
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class _HeadTooLarge(Exception):
    pass


class BoundedHeadProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_head_bytes, self._head_timeout = _bounds()
        self._reading_head = True
        self._head_bytes = 0
        self._head_deadline: asyncio.TimerHandle | None = None
        self._refused = False
        self._parsed_head_bytes = 0
        self._head_too_large = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._start_head_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # what a refused client still sends is read and dropped
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._reading_head and self._head_bytes > self._max_head_bytes:
            self._refuse(431, "REQUEST_HEADERS_TOO_LARGE", "Request headers too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._parsed_head_bytes = 0
        if not self._reading_head:
            self._reading_head = True
            self._start_head_clock()

    # The exact size of a head that arrived whole in one read (which `data_received`
    # cannot tell from the body after it), counted as the parser hands it over.
    def on_url(self, url: bytes) -> None:
        self._count_parsed(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_parsed(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_parsed(self, size: int) -> None:
        self._parsed_head_bytes += size
        if self._parsed_head_bytes > self._max_head_bytes:
            # Stops the parser: Uvicorn answers its errors with send_400_response,
            # which answers 431 instead (below).
            self._head_too_large = True
            raise _HeadTooLarge

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:
            self._refuse(431, "REQUEST_HEADERS_TOO_LARGE", "Request headers too large")
        else:
            super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        self._stop_head_clock()
        super().on_headers_complete()

    def _start_head_clock(self) -> None:
        self._stop_head_clock()
        self._head_deadline = self.loop.call_later(self._head_timeout, self._head_too_slow)

    def _stop_head_clock(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if not self._reading_head:
            return
        if self._head_bytes > 0:
            self._refuse(408, "REQUEST_TIMEOUT", "Request headers took too long")
        elif not self.transport.is_closing():
            # A connection that never said anything (between requests Uvicorn's own
            # keep-alive timeout applies instead).
            self.transport.close()

    def _refuse(self, status: int, code: str, message: str) -> None:
        self._reading_head = False
        self._stop_head_clock()
        if self.transport.is_closing():
            return
        log.warning("request_head_refused", status=status, client=self.client)
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # an answer is under way: no room for another
            return
        # A lingering close, as nginx does: answer, end our side, and read (dropping it)
        # what the client is still sending for a moment before closing. Closing at once
        # with its bytes unread would reset the connection, and the client might never
        # see the answer.
        self._refused = True
        self.transport.write(_refusal(status, code, message))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER_SECONDS, self.transport.close)
