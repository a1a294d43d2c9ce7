"""What the soak wrote and got acknowledged (2xx), as each thing must read at the end.

Each load account is driven by one virtual user, one request at a time, and nobody
else writes its items or files: so the ledger is the exact state the server must
show, during the run (reads, lists, exports) and at the end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (name suffix, declared type, the type the server must detect or keep)
FILE_TYPES = (
    ("png", "image/png", "image/png"),
    ("txt", "text/plain", "text/plain"),
    ("json", "application/json", "application/json"),
)
# (bytes, weight): mostly small files, some large enough to stream in many chunks.
FILE_SIZES = ((1024, 40), (48 * 1024, 30), (512 * 1024, 20), (3 * 1024 * 1024, 10))

ITEM_FIELDS = ("title", "description", "status", "tags")
# An item event as the ledger and a realtime client each note it: (event, id, version),
# version 0 for deletions (matched on the id alone).
Event = tuple[str, str, int]


def file_content(kind: str, size: int, seed: int) -> bytes:
    """The bytes of a soak file, made again from its seed whenever they are needed (the
    soak keeps no file in memory)."""
    rng = random.Random(seed)  # noqa: S311 - test data, not a secret
    if kind == "png":
        return PNG_SIGNATURE + rng.randbytes(size - len(PNG_SIGNATURE))
    text = base64.encodebytes(rng.randbytes(size)).decode()
    if kind == "txt":
        return text[:size].encode()
    body = text.replace("\n", "")[: size - 10]
    return ('{"pad":"' + body + '"}').encode()


@dataclass
class ItemRecord:
    id: str
    fields: dict[str, Any]
    version: int = 1
    deleted: bool = False
    # A write to it ended without an answer (transport error, 5xx): its state is unknown.
    uncertain: bool = False

    def matches(self, shown: dict[str, Any]) -> list[str]:
        """What differs between the server's item and this record."""
        wrong = [
            f"{name}: {shown.get(name)!r} != {self.fields[name]!r}"
            for name in ITEM_FIELDS
            if shown.get(name) != self.fields[name]
        ]
        if shown.get("version") != self.version:
            wrong.append(f"version: {shown.get('version')} != {self.version}")
        return wrong


@dataclass
class FileRecord:
    id: str
    kind: str
    filename: str
    content_type: str
    size: int
    seed: int
    sha256: str
    deleted: bool = False
    uncertain: bool = False

    def content(self) -> bytes:
        return file_content(self.kind, self.size, self.seed)

    def matches(self, shown: dict[str, Any]) -> list[str]:
        expected = {
            "id": self.id,
            "filename": self.filename,
            "content_type": self.content_type,
            "size": self.size,
            "sha256": self.sha256,
        }
        return [f"{k}: {shown.get(k)!r} != {v!r}" for k, v in expected.items() if shown.get(k) != v]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Account:
    """A user account of the soak, and what it wrote."""

    email: str
    user_id: str
    role: str = "user"
    access_token: str = ""
    refresh_token: str = ""
    token_at: float = 0.0
    items: dict[str, ItemRecord] = field(default_factory=dict)
    files: dict[str, FileRecord] = field(default_factory=dict)
    # Every acknowledged item write, in order: what its realtime clients must get.
    events: list[Event] = field(default_factory=list)

    def live_items(self) -> list[ItemRecord]:
        return [i for i in self.items.values() if not i.deleted and not i.uncertain]

    def gone_items(self) -> list[ItemRecord]:
        return [i for i in self.items.values() if i.deleted and not i.uncertain]

    def live_files(self) -> list[FileRecord]:
        return [f for f in self.files.values() if not f.deleted and not f.uncertain]

    def gone_files(self) -> list[FileRecord]:
        return [f for f in self.files.values() if f.deleted and not f.uncertain]


@dataclass
class Newcomer:
    """An account made through `POST /auth/register` during the run."""

    email: str
    user_id: str = ""
    welcomed: bool = False  # the worker's welcome e-mail was found
    verified: bool = False  # `POST /auth/verify-email` answered 204


class Gate:
    """Lets the load be paused: `action()` waits while closed, and `close()` returns
    once every action that was running has finished (for quiet RSS samples)."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = 0

    @contextlib.asynccontextmanager
    async def action(self) -> AsyncIterator[None]:
        await self._open.wait()
        self._busy += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._busy -= 1
            if self._busy == 0:
                self._idle.set()

    async def close(self) -> None:
        self._open.clear()
        await self._idle.wait()

    def open(self) -> None:
        self._open.set()
