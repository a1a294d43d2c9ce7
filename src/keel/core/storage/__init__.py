"""Where file bytes live: one small interface, a local folder or an S3-compatible store
behind it (chosen once, in the composition root).

Objects are written through an `ObjectWriter` that makes them visible only on
`commit()` (a rename on disk, a completed upload on S3) and leaves nothing behind on
`abort()`, so a failed upload never leaves a partial object under its key. Keys are
made by the caller (never from a client's file name) and are plain `[0-9a-f]` strings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from keel.config import Settings

# Downloads are streamed in chunks of this size: memory stays flat however large the file.
CHUNK_BYTES = 256 * 1024


class StorageError(Exception):
    """The store failed (unreachable, refused, out of space)."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    size: int
    modified_at: datetime


class ObjectWriter(Protocol):
    async def write(self, chunks: Sequence[bytes]) -> None:
        """Append `chunks`, in order (callers write in large batches)."""

    async def commit(self) -> None:
        """Make the object visible under its key, durably."""

    async def abort(self) -> None:
        """Forget everything written; safe to call more than once, and after commit
        (then it does nothing)."""


class Storage(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def check(self) -> None:
        """Raise StorageError when the store cannot be used (readiness)."""

    def writer(self, key: str) -> ObjectWriter: ...

    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes from `start` to `end` inclusive (None: to the last), in chunks.
        Raises FileNotFoundError (before the first chunk) when there is no such object."""

    async def delete(self, key: str) -> None:
        """Remove the object; nothing happens when there is none."""

    async def exists(self, key: str) -> bool: ...

    def objects(self) -> AsyncIterator[StoredObject]:
        """Every stored object (committed ones only), in no particular order."""

    async def forget_incomplete(self, older_than: datetime) -> int:
        """Remove what uploads begun before `older_than` and never finished left behind
        (a process killed mid-upload); how many were removed."""

    async def presigned_url(
        self, key: str, *, filename: str, content_type: str, expires_in: int
    ) -> str | None:
        """A URL that downloads the object without credentials, signed by the store
        itself; None when the store cannot sign one (the caller signs its own)."""


def create_storage(settings: Settings) -> Storage:
    """The backend the settings ask for (imported here, so the S3 client library loads
    only when it is used, and the backends can import this module's types)."""
    if settings.storage.backend == "s3":
        from keel.core.storage.s3 import S3Storage  # noqa: PLC0415 - see the docstring

        return S3Storage.from_settings(settings)
    from keel.core.storage.local import LocalStorage  # noqa: PLC0415 - see the docstring

    return LocalStorage(settings.storage_path)


__all__ = [
    "CHUNK_BYTES",
    "ObjectWriter",
    "Storage",
    "StorageError",
    "StoredObject",
    "create_storage",
]
