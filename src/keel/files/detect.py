"""What an upload is, from its bytes: the type a file is stored and served as.

Binary formats are recognised by their magic bytes (puremagic, a maintained pure-Python
signature database); the client's declared type only has to agree. Text formats cannot
be told apart by their bytes, so for valid UTF-8 the declared `text/plain`, `text/csv`
or `application/json` is kept (JSON only when it parses), and anything else declared
for text is a contradiction. Markup (HTML, SVG, XML) is recognised and refused outright:
served from this origin, a browser could run its scripts.

The check is incremental: the head decides the type as soon as enough bytes have
arrived (so a refused type is answered before the rest is read), and the rest is then
checked as it streams: UTF-8 throughout for text, one JSON document for JSON.
"""

from __future__ import annotations

import codecs
from collections.abc import Collection
from typing import Any

import ijson
import puremagic

from keel.core.errors import UnsupportedMediaType

# Enough for every signature of the allowed types, and a fair look at a text's start.
HEAD_BYTES = 4096
TEXT_TYPES = frozenset({"text/plain", "text/csv", "application/json"})
# What a client may call a type (in its Content-Type) and what Keel calls it.
_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "application/x-pdf": "application/pdf",
    "text/json": "application/json",
    "application/csv": "text/csv",
    "text/x-csv": "text/csv",
}
# Declared types that say nothing about the content.
_UNSAID = frozenset({"", "application/octet-stream", "binary/octet-stream"})
_MARKUP_TYPES = frozenset({"text/html", "image/svg+xml", "application/xml", "text/xml"})
_MARKUP_STARTS = (b"<!doctype", b"<html", b"<head", b"<body", b"<script", b"<svg", b"<?xml")


def normalise(content_type: str | None) -> str:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return _ALIASES.get(media_type, media_type)


def _magic_types(head: bytes) -> list[str]:
    try:
        matches = puremagic.magic_string(head)
    except (puremagic.PureError, ValueError):
        return []
    return [normalise(match.mime_type) for match in matches if match.mime_type]


def _is_text(head: bytes) -> bool:
    """UTF-8 without NUL (a sequence cut by the head's end is fine)."""
    if b"\x00" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


def _looks_like_markup(head: bytes) -> bool:
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return start.startswith(_MARKUP_STARTS)


class ContentCheck:
    """Fed an upload's bytes in order; `content_type` is the type it is stored as."""

    def __init__(self, declared: str | None, allowed: Collection[str]) -> None:
        self.declared = normalise(declared)
        self.allowed = frozenset(normalise(kind) for kind in allowed)
        self.content_type: str | None = None
        self._head = bytearray()
        self._utf8: codecs.IncrementalDecoder | None = None
        self._json: Any = None

    def feed(self, data: bytes) -> None:
        if self.content_type is None:
            self._head += data
            if len(self._head) >= HEAD_BYTES:
                self._decide(bytes(self._head))
            return
        if self._utf8 is not None:
            self._check_text(data)

    def finish(self) -> str:
        """The type, once every byte has been fed (raises when the content is refused)."""
        if self.content_type is None:
            self._decide(bytes(self._head))
        if self._utf8 is not None:
            self._check_text(b"", final=True)
        assert self.content_type is not None  # noqa: S101 - _decide sets it or raises
        return self.content_type

    def _decide(self, head: bytes) -> None:
        candidates = _magic_types(head)
        if _looks_like_markup(head) or _MARKUP_TYPES.intersection(candidates[:1]):
            raise UnsupportedMediaType("HTML, SVG and XML files cannot be uploaded")
        # Signatures are matched loosely (a text can "look like" an office document):
        # a binary type counts when it is one Keel accepts, or when the bytes are not
        # text at all.
        binary = [kind for kind in candidates if kind not in TEXT_TYPES]
        accepted = [kind for kind in binary if kind in self.allowed]
        if accepted:
            self._settle(accepted[0])
            return
        if not _is_text(head):
            if self.declared in TEXT_TYPES and not binary:
                raise UnsupportedMediaType("Text files must be UTF-8 (without NUL bytes)")
            self._settle(binary[0] if binary else "application/octet-stream")
            return
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        text_type = self.declared if self.declared in TEXT_TYPES else "text/plain"
        if self.declared not in _UNSAID and self.declared not in TEXT_TYPES:
            raise UnsupportedMediaType(f"The content is text, not {self.declared}")
        self._settle(text_type)
        if text_type == "application/json":
            self._json = ijson.basic_parse_coro(_Discard())
        self._check_text(head)

    def _settle(self, detected: str) -> None:
        if detected not in self.allowed:
            raise UnsupportedMediaType(f"Files of type {detected} are not allowed")
        if self.declared not in _UNSAID and self.declared != detected:
            raise UnsupportedMediaType(
                f"The content is {detected}, which contradicts the declared {self.declared}"
            )
        self.content_type = detected

    def _check_text(self, data: bytes, *, final: bool = False) -> None:
        assert self._utf8 is not None  # noqa: S101 - only text reaches here
        try:
            self._utf8.decode(data, final)
        except UnicodeDecodeError:
            raise UnsupportedMediaType("Text files must be UTF-8") from None
        if b"\x00" in data:
            raise UnsupportedMediaType("Text files cannot contain NUL bytes")
        if self._json is not None:
            try:
                if data:
                    self._json.send(data)
                if final:
                    self._json.close()
            except ijson.JSONError:
                raise UnsupportedMediaType("The content is not valid JSON") from None


class _Discard:
    """ijson's push parser wants a target; validity is all that is checked."""

    def send(self, _event: object) -> None:
        return None
