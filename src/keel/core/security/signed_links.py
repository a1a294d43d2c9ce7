"""Expiring links that work without credentials: an HMAC over what the link opens and
until when, checked in constant time. For stores that cannot sign their own URLs (the
local folder); S3 presigns its own."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time


class LinkSigner:
    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("the link secret must not be empty")
        # A key of its own, so a link's MAC can never pass for another signed value.
        self._key = hmac.new(secret, b"keel.signed-link.v1", hashlib.sha256).digest()

    def _mac(self, subject: str, expires: int) -> str:
        digest = hmac.new(self._key, f"{subject}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, subject: str, expires: int) -> str:
        """The signature of a link to `subject` valid until `expires` (Unix seconds)."""
        return self._mac(subject, expires)

    def valid(self, subject: str, expires: int, signature: str, now: float | None = None) -> bool:
        """The signature is this signer's for `subject` and `expires`, which is not past."""
        expected = self._mac(subject, expires)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            return False
        return (time.time() if now is None else now) < expires
