"""Conditional requests (RFC 9110 §13): ETag, If-None-Match, If-Match.

A versioned resource's ETag is its version, quoted (`"7"`). Its read schema says so by
deriving from `Versioned`; the route class then sets the header and answers 304 on its
own (core/routing.py). `If-Match` is an input of the write itself: services put the
versions it names into their conditional UPDATE, so the check and the change are one
statement and a race cannot slip between them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, ClassVar

from fastapi import Depends, Header
from pydantic import BaseModel

from keel.core.openapi import answers

# One entity tag: optional W/ and a quoted opaque part (RFC 9110 §8.8.3).
_ENTITY_TAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|$)')


class Versioned(BaseModel):
    """A read schema whose ETag is its `version` field."""

    etag_field: ClassVar[str] = "version"


def etag_value(value: object) -> str:
    return f'"{value}"'


def _entity_tags(header: str) -> list[tuple[bool, str]] | None:
    """(weak, opaque) of each tag in a list header; None when the header is malformed."""
    tags: list[tuple[bool, str]] = []
    position = 0
    while position < len(header):
        match = _ENTITY_TAG.match(header, position)
        if match is None:
            return None
        tags.append((match.group(1) is not None, match.group(2)))
        position = match.end()
    return tags


def none_match(header: str | None, tag: str) -> bool:
    """If-None-Match holds the current tag (weak comparison): answer 304."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    opaque = tag.strip('"')
    return any(candidate == opaque for _weak, candidate in _entity_tags(header) or [])


@dataclass(frozen=True, slots=True)
class IfMatch:
    """The versions a write may apply to: None means any (no header, or `*`)."""

    versions: frozenset[int] | None

    @property
    def unconditional(self) -> bool:
        return self.versions is None


def parse_if_match(header: str | None) -> IfMatch:
    if header is None or header.strip() == "*":
        return IfMatch(None)
    # Strong comparison: a weak tag never matches, nor does anything that is not one of
    # our tags; an empty set of versions fails every write with 412.
    versions = {
        int(opaque)
        for weak, opaque in _entity_tags(header) or []
        if not weak and opaque.isdigit() and len(opaque) < 19
    }
    return IfMatch(frozenset(versions))


@answers(412)
async def _if_match(
    if_match: Annotated[
        str | None,
        Header(
            alias="If-Match",
            description='Apply only if the current ETag is one of these (e.g. `"3"`); else 412.',
        ),
    ] = None,
) -> IfMatch:
    return parse_if_match(if_match)


IfMatchHeader = Annotated[IfMatch, Depends(_if_match)]
