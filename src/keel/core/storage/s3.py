"""File bytes in any S3-compatible store (AWS S3, MinIO, Ceph, moto), through aioboto3.

Small objects are one PUT; larger ones a multipart upload in parts of
`KEEL_STORAGE_S3_PART_BYTES`, so memory holds one part, never the file, and a failed
upload is aborted (S3 keeps nothing of it). Credentials come from the standard AWS
chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, a profile, an instance role).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from keel.core.downloads import content_disposition, served_type
from keel.core.storage import CHUNK_BYTES, StorageError, StoredObject

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

    from keel.config import Settings

_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})


def _missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code")) in _MISSING


class S3Writer:
    """A multipart upload with one part in flight while the next one fills (so the
    client is never kept waiting on a whole part's round trip), or a single PUT for an
    object smaller than one part."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        self._storage = storage
        self._key = key
        # Chunks of the part being filled, joined once when it is sent.
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._sending: asyncio.Future[None] | None = None
        self._done = False

    async def write(self, chunks: Sequence[bytes]) -> None:
        self._chunks.extend(chunks)
        self._buffered += sum(len(chunk) for chunk in chunks)
        if self._buffered >= self._storage.part_bytes:
            await self._settle()
            if self._upload_id is None:
                started = await self._call(
                    self._storage.client.create_multipart_upload,
                    Bucket=self._storage.bucket,
                    Key=self._key,
                )
                self._upload_id = started["UploadId"]
            self._sending = asyncio.ensure_future(self._send_part(self._take()))

    def _take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks, self._buffered = [], 0
        return data

    async def _settle(self) -> None:
        sending, self._sending = self._sending, None
        if sending is not None:
            await sending

    @staticmethod
    async def _call(method: Any, **arguments: Any) -> Any:
        try:
            answer = await method(**arguments)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"upload to the store failed: {exc}") from exc
        return answer

    async def _send_part(self, data: bytes) -> None:
        number = len(self._parts) + 1
        # Reserved before the await, so the parts stay in order.
        entry: dict[str, Any] = {"PartNumber": number}
        self._parts.append(entry)
        sent = await self._call(
            self._storage.client.upload_part,
            Bucket=self._storage.bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=data,
        )
        entry["ETag"] = sent["ETag"]

    async def commit(self) -> None:
        client, bucket = self._storage.client, self._storage.bucket
        await self._settle()
        if self._upload_id is None:
            await self._call(client.put_object, Bucket=bucket, Key=self._key, Body=self._take())
        else:
            if self._chunks:
                await self._send_part(self._take())
            await self._call(
                client.complete_multipart_upload,
                Bucket=bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        self._done = True

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._chunks, self._buffered = [], 0
        # The part in flight ends first: aborting under it could leave it stored.
        with contextlib.suppress(Exception):
            await self._settle()
        if self._upload_id is not None:
            # Left unaborted, the parts would be kept (and billed) until swept.
            with contextlib.suppress(BotoCoreError, ClientError):
                await self._storage.client.abort_multipart_upload(
                    Bucket=self._storage.bucket, Key=self._key, UploadId=self._upload_id
                )


class S3Storage:
    name = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None,
        region: str | None,
        part_bytes: int,
    ) -> None:
        self.bucket = bucket
        self.part_bytes = part_bytes
        self._endpoint_url = endpoint_url
        self._region = region
        self._stack = contextlib.AsyncExitStack()
        self._client: S3Client | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        storage = settings.storage
        assert storage.s3_bucket is not None  # noqa: S101 - the settings check this
        return cls(
            storage.s3_bucket,
            endpoint_url=storage.s3_endpoint_url,
            region=storage.s3_region,
            part_bytes=storage.s3_part_bytes,
        )

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise StorageError("the S3 storage is not started")
        return self._client

    async def start(self) -> None:
        session = aioboto3.Session()
        config = AioConfig(
            signature_version="s3v4",
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 3, "mode": "standard"},
            # botocore would add a CRC32 of every part, computed on the event loop; the
            # sha256 Keel computes (off the loop) is the file's checksum.
            request_checksum_calculation="when_required",
        )
        self._client = await self._stack.enter_async_context(
            session.client(
                "s3",
                endpoint_url=self._endpoint_url,
                region_name=self._region,
                config=config,
            )
        )

    async def close(self) -> None:
        self._client = None
        await self._stack.aclose()

    async def check(self) -> None:
        try:
            await self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"the bucket {self.bucket!r} cannot be reached: {exc}") from exc

    def writer(self, key: str) -> S3Writer:
        return S3Writer(self, key)

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        byte_range = f"bytes={start}-{'' if end is None else end}"
        try:
            answer = await self.client.get_object(Bucket=self.bucket, Key=key, Range=byte_range)
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(key) from exc
            raise StorageError(f"reading from the store failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"reading from the store failed: {exc}") from exc
        body = answer["Body"]
        try:
            while chunk := await body.read(CHUNK_BYTES):
                yield chunk
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        try:
            await self.client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"deleting from the store failed: {exc}") from exc

    async def exists(self, key: str) -> bool:
        try:
            await self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                return False
            raise StorageError(f"the store failed: {exc}") from exc
        return True

    async def objects(self) -> AsyncIterator[StoredObject]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        async for page in pages:
            for entry in page.get("Contents", ()):
                yield StoredObject(entry["Key"], entry["Size"], entry["LastModified"])

    async def forget_incomplete(self, older_than: datetime) -> int:
        removed = 0
        pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket)
        async for page in pages:
            for upload in page.get("Uploads", ()):
                if upload["Initiated"] < older_than:
                    await self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    removed += 1
        return removed

    async def presigned_url(
        self, key: str, *, filename: str, content_type: str, expires_in: int
    ) -> str | None:
        # The store serves the download itself, with the headers Keel would have sent.
        url: str = await self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "ResponseContentDisposition": content_disposition(filename),
                "ResponseContentType": served_type(content_type),
            },
            ExpiresIn=expires_in,
        )
        return url
