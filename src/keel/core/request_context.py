"""The id of the request being served, readable anywhere in its task."""

from __future__ import annotations

import os
import re
from contextvars import ContextVar

_request_id: ContextVar[str | None] = ContextVar("keel_request_id", default=None)

# API.md: a caller's id is kept when it is well formed, otherwise replaced.
_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,128}")


def current_request_id() -> str | None:
    return _request_id.get()


def set_request_id(request_id: str | None) -> None:
    _request_id.set(request_id)


def accept_or_make_request_id(sent: bytes | None) -> str:
    if sent is not None and _VALID_REQUEST_ID.fullmatch(sent):
        return sent.decode("ascii")
    # 128 random bits as hex, like uuid4().hex but without building a UUID object.
    return os.urandom(16).hex()
