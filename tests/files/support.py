"""Helpers for file tests: uploads as a client sends them, and what storage holds."""

from __future__ import annotations

import hashlib

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select

from keel.models import File

FILES = "/api/v1/files"
# The smallest real PNG and PDF heads: the bytes the type is detected from.
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" + b"x" * 500


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def upload(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    content: bytes,
    *,
    filename: str = "picture.png",
    content_type: str | None = "image/png",
    extra_headers: dict[str, str] | None = None,
) -> httpx.Response:
    part: tuple[str, bytes] | tuple[str, bytes, str] = (
        (filename, content) if content_type is None else (filename, content, content_type)
    )
    return await client.post(
        FILES, files={"file": part}, headers={**headers, **(extra_headers or {})}
    )


async def stored_keys(app: FastAPI) -> set[str]:
    """Every object the app's storage holds."""
    return {found.key async for found in app.state.storage.objects()}


async def row_count(app: FastAPI) -> int:
    async with app.state.resources.engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(File))).scalar_one())


async def raw_upload(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    content: bytes,
    *,
    filename: str,
    content_type: str = "text/plain",
) -> httpx.Response:
    """A multipart body written by hand: the file name goes as raw UTF-8, control
    characters included (clients such as httpx would percent-encode those)."""
    boundary = "keel-test-boundary-7d41"
    body = (
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return await client.post(
        FILES,
        content=body,
        headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
