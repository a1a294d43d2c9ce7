"""File bytes in a local folder: for one host, and for development.

An object is written to `incoming/` under a name of its own, flushed to disk (fsync)
and only then renamed into `objects/`, so a crash never leaves a partial object under
a key; the folder is fsynced too, so the rename itself survives a power cut. Objects
are spread over 256 sub-folders by the key's last two characters (keys are random
there), so no folder grows past what a file system lists quickly. Blocking file work
runs on worker threads, never on the event loop.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread

from keel.core.storage import CHUNK_BYTES, StorageError, StoredObject


def _check_key(key: str) -> str:
    if not key or not all(char in "0123456789abcdef" for char in key):
        raise ValueError(f"not a storage key: {key!r}")
    return key


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class LocalWriter:
    def __init__(self, storage: LocalStorage, key: str) -> None:
        self._storage = storage
        self._final = storage.path_of(key)
        self._temporary = storage.incoming / f"{key}.{secrets.token_hex(4)}.part"
        self._file: Any = None
        self._done = False

    async def write(self, chunks: Sequence[bytes]) -> None:
        # Callers write in large batches (uploads: 1 MiB): one thread hop each.
        try:
            await anyio.to_thread.run_sync(self._write, chunks)
        except OSError as exc:  # a full disk, a folder gone read-only
            raise StorageError(f"writing to the storage folder failed: {exc.strerror}") from exc

    def _write(self, chunks: Sequence[bytes]) -> None:
        if self._file is None:
            # Held open across calls, closed by _finish or _discard.
            self._file = self._temporary.open("xb", buffering=0)
        self._file.writelines(chunks)

    async def commit(self) -> None:
        try:
            await anyio.to_thread.run_sync(self._finish)
        except OSError as exc:
            raise StorageError(f"writing to the storage folder failed: {exc.strerror}") from exc
        self._done = True

    def _finish(self) -> None:
        if self._file is None:  # an empty object
            self._file = self._temporary.open("xb", buffering=0)
        try:
            os.fsync(self._file.fileno())
        finally:
            self._file.close()
        self._final.parent.mkdir(parents=True, exist_ok=True)
        self._temporary.replace(self._final)
        _fsync_folder(self._final.parent)

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        await anyio.to_thread.run_sync(self._discard)

    def _discard(self) -> None:
        if self._file is not None:
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._temporary.unlink()


class LocalStorage:
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.objects_folder = self.root / "objects"
        self.incoming = self.root / "incoming"

    async def start(self) -> None:
        await anyio.to_thread.run_sync(self._make_folders)

    def _make_folders(self) -> None:
        self.objects_folder.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        return None

    async def check(self) -> None:
        if not await anyio.to_thread.run_sync(os.access, self.objects_folder, os.W_OK):
            raise StorageError(f"the storage folder is not writable: {self.objects_folder.name}")

    def path_of(self, key: str) -> Path:
        key = _check_key(key)
        return self.objects_folder / key[-2:] / key

    def writer(self, key: str) -> LocalWriter:
        return LocalWriter(self, key)

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        path = self.path_of(key)
        handle = await anyio.to_thread.run_sync(open, path, "rb")
        try:
            await anyio.to_thread.run_sync(handle.seek, start)
            remaining = None if end is None else end - start + 1
            while remaining is None or remaining > 0:
                size = CHUNK_BYTES if remaining is None else min(CHUNK_BYTES, remaining)
                chunk = await anyio.to_thread.run_sync(handle.read, size)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            handle.close()

    async def delete(self, key: str) -> None:
        path = self.path_of(key)
        await anyio.to_thread.run_sync(self._unlink, path)

    @staticmethod
    def _unlink(path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    async def exists(self, key: str) -> bool:
        return await anyio.to_thread.run_sync(self.path_of(key).is_file)

    async def objects(self) -> AsyncIterator[StoredObject]:
        shards = await anyio.to_thread.run_sync(self._shards)
        for shard in shards:
            for found in await anyio.to_thread.run_sync(self._listing, shard):
                yield found

    def _shards(self) -> list[Path]:
        if not self.objects_folder.is_dir():
            return []
        return sorted(entry for entry in self.objects_folder.iterdir() if entry.is_dir())

    @staticmethod
    def _listing(shard: Path) -> list[StoredObject]:
        found = []
        with os.scandir(shard) as entries:
            for entry in entries:
                try:
                    info = entry.stat()
                except FileNotFoundError:  # deleted while listed
                    continue
                modified = datetime.fromtimestamp(info.st_mtime, UTC)
                found.append(StoredObject(entry.name, info.st_size, modified))
        return found

    async def forget_incomplete(self, older_than: datetime) -> int:
        """Remove what uploads that never finished left in `incoming/` (a crash)."""
        return await anyio.to_thread.run_sync(self._remove_stale_parts, older_than.timestamp())

    def _remove_stale_parts(self, cutoff: float) -> int:
        removed = 0
        if not self.incoming.is_dir():
            return 0
        for entry in self.incoming.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
        return removed

    async def presigned_url(
        self, key: str, *, filename: str, content_type: str, expires_in: int
    ) -> str | None:
        return None  # a folder cannot sign: Keel signs its own links
