"""Signed links (Keel's own on the local backend, the store's presigned URL on S3), and
crash safety: the sweep and `keel files check`."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from keel.cli import app as cli
from keel.files.repository import find
from keel.files.sweep import BATCH, sweep
from tests.factories.users import signed_in
from tests.files.conftest import AppWith
from tests.files.support import FILES, PNG, stored_keys, upload
from tests.fixtures import s3

pytestmark = pytest.mark.anyio


async def _link(
    client: httpx.AsyncClient, headers: dict[str, str], file_id: str, **body: int
) -> httpx.Response:
    return await client.post(f"{FILES}/{file_id}/link", json=body or None, headers=headers)


async def test_a_link_downloads_without_credentials(
    app: FastAPI, client: httpx.AsyncClient, storage_backend: str
) -> None:
    owner = await signed_in(app, client)
    created = (await upload(client, owner.headers, PNG, filename="shared.png")).json()
    before = time.time()
    response = await _link(client, owner.headers, created["id"], expires_in=120)
    assert response.status_code == 200, response.text
    body = response.json()
    expiry = datetime.fromisoformat(body["expires_at"]).timestamp()
    assert before + 119 <= expiry <= time.time() + 122
    assert body["url"].startswith(f"http://localhost:8000{FILES}/{created['id']}/download?")
    url = httpx.URL(body["url"])
    fetched = await client.get(url.path, params=dict(url.params))  # no credentials
    if storage_backend == "s3":
        # Keel checked the link, then sends the client to the store's own presigned
        # URL (SigV4), valid no longer than the link; the bytes come from the store.
        assert fetched.status_code == 307
        direct = httpx.URL(fetched.headers["location"])
        assert 118 <= int(direct.params["X-Amz-Expires"]) <= 120
        assert "X-Amz-Signature" in direct.params
        async with httpx.AsyncClient() as outside:
            fetched = await outside.get(direct)
    assert fetched.status_code == 200, fetched.text
    assert fetched.content == PNG
    assert "attachment" in fetched.headers["content-disposition"]
    assert "shared.png" in fetched.headers["content-disposition"]


async def test_a_link_lifetime_outside_its_bounds_is_422(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    owner = await signed_in(app, client)
    created = (await upload(client, owner.headers, PNG)).json()
    for expires_in in (0, 86_401, -5):
        response = await _link(client, owner.headers, created["id"], expires_in=expires_in)
        assert response.status_code == 422
    unknown = await client.post(
        f"{FILES}/{created['id']}/link", json={"expires": 5}, headers=owner.headers
    )
    assert unknown.status_code == 422
    default = await _link(client, owner.headers, created["id"])
    assert default.status_code == 200


async def test_a_link_fails_once_expired_tampered_or_deleted(
    app: FastAPI, client: httpx.AsyncClient, storage_backend: str
) -> None:
    owner = await signed_in(app, client)
    created = (await upload(client, owner.headers, PNG)).json()
    link = httpx.URL(
        (await _link(client, owner.headers, created["id"], expires_in=60)).json()["url"]
    )
    params = dict(link.params)
    working = await client.get(link.path, params=params)
    assert working.status_code == (200 if storage_backend == "local" else 307)

    tampered = {**params, "signature": params["signature"][:-2] + "AA"}
    longer = {**params, "expires": str(int(params["expires"]) + 3600)}
    other_file = f"{FILES}/{created['id'][:-1]}{'0' if created['id'][-1] != '0' else '1'}/download"
    for path, query in ((link.path, tampered), (link.path, longer), (other_file, params)):
        refused = await client.get(path, params=query)
        assert refused.status_code == 403, query
        assert refused.json()["error"]["code"] == "FORBIDDEN"

    signer = app.state.links
    past = int(time.time()) - 1
    expired = {"expires": str(past), "signature": signer.sign(created["id"], past)}
    refused = await client.get(link.path, params=expired)
    assert refused.status_code == 403

    assert (
        await client.delete(f"{FILES}/{created['id']}", headers=owner.headers)
    ).status_code == 204
    gone = await client.get(link.path, params=params)
    assert gone.status_code == 404


async def _plant_orphan(app: FastAPI, key: str, age_seconds: float) -> None:
    storage = app.state.storage
    writer = storage.writer(key)
    await writer.write([b"left behind by a crash"])
    await writer.commit()
    if storage.name == "local":
        stamp = time.time() - age_seconds
        os.utime(storage.path_of(key), (stamp, stamp))


async def test_the_sweep_removes_old_orphans_and_reports_missing_bytes(
    app: FastAPI, client: httpx.AsyncClient, storage_backend: str
) -> None:
    owner = await signed_in(app, client)
    kept = (await upload(client, owner.headers, PNG)).json()
    lost = (await upload(client, owner.headers, PNG + b"2")).json()
    keys = await stored_keys(app)
    assert len(keys) == 2
    kept_key = await _key_of(app, kept["id"])
    lost_key = next(key for key in keys if key != kept_key)
    await app.state.storage.delete(lost_key)
    await _plant_orphan(app, "0abc" * 8, age_seconds=7200)

    # With an hour's grace, a fresh orphan stays (it could be an upload in flight);
    # on S3 every object is fresh here, so the grace decides alone.
    graceful = await sweep(app.state.database, app.state.storage, grace=timedelta(hours=1))
    assert graceful.missing == [(lost["id"], lost_key)]
    if storage_backend == "local":
        assert graceful.orphans_removed == ["0abc" * 8]
    else:
        assert graceful.orphans_removed == []
        assert graceful.orphans_kept == 1
        swept = await sweep(app.state.database, app.state.storage, grace=timedelta(0))
        assert swept.orphans_removed == ["0abc" * 8]
    assert await stored_keys(app) == {kept_key}


class _DeletedDuringTheCheck:
    """The app's storage, with a file deleted through the API just as the sweep asks
    whether its bytes exist: the race between the sweep's read of the rows and a delete."""

    def __init__(self, storage: object, delete: Callable[[], Awaitable[None]]) -> None:
        self._storage = storage
        self._delete: Callable[[], Awaitable[None]] | None = delete

    def __getattr__(self, name: str) -> object:
        return getattr(self._storage, name)

    async def exists(self, key: str) -> bool:
        if self._delete is not None:
            delete, self._delete = self._delete, None
            await delete()
        found: bool = await self._storage.exists(key)  # type: ignore[attr-defined]
        return found


async def test_a_file_deleted_during_the_sweep_is_not_reported_missing(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    # Seen in the soak: `file_object_missing` logged for a file deleted 4 ms earlier.
    owner = await signed_in(app, client)
    doomed = (await upload(client, owner.headers, PNG)).json()

    async def delete() -> None:
        response = await client.delete(f"{FILES}/{doomed['id']}", headers=owner.headers)
        assert response.status_code == 204

    storage = _DeletedDuringTheCheck(app.state.storage, delete)
    report = await sweep(app.state.database, storage, grace=timedelta(hours=1))  # type: ignore[arg-type]
    assert report.files_seen == 1
    assert report.missing == []


async def _key_of(app: FastAPI, file_id: str) -> str:
    async with app.state.database.transaction(write=False) as db:
        row = await find(db, uuid.UUID(file_id), None)
    assert row is not None
    return row["storage_key"]


async def test_an_aborted_s3_multipart_upload_is_aborted(
    app_with: AppWith, storage_backend: str
) -> None:
    """A writer aborted after its first part leaves no object and no open upload."""
    async with app_with() as (app, _client):
        storage = app.state.storage
        writer = storage.writer("feed" * 8)
        part = getattr(storage, "part_bytes", 1024 * 1024)
        await writer.write([b"x" * part])
        await writer.abort()
        assert await stored_keys(app) == set()
        if storage_backend == "s3":
            settings = app.state.settings
            assert (
                s3.incomplete_uploads(settings.storage.s3_endpoint_url, settings.storage.s3_bucket)
                == []
            )
        else:
            assert list(storage.incoming.iterdir()) == []


def test_keel_files_check_prints_what_it_found(cli_env: Path) -> None:
    runner = CliRunner()
    migrated = runner.invoke(cli, ["db", "upgrade"])
    assert migrated.exit_code == 0, migrated.output
    orphan = cli_env / "files" / "objects" / "ef" / ("0123" * 7 + "abef")
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"orphan")
    stamp = time.time() - 7200
    os.utime(orphan, (stamp, stamp))

    dry = runner.invoke(cli, ["files", "check", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "1 orphaned objects would be deleted" in dry.output
    assert orphan.exists()

    real = runner.invoke(cli, ["files", "check"])
    assert real.exit_code == 0, real.output
    assert "1 orphaned objects deleted" in real.output
    assert not orphan.exists()


async def test_the_sweep_works_in_batches(app: FastAPI, client: httpx.AsyncClient) -> None:
    """More objects than one batch: each batch is checked, none is missed."""
    owner = await signed_in(app, client)
    kept = (await upload(client, owner.headers, PNG)).json()
    orphans = [f"{n:032x}" for n in range(1, BATCH + 20)]
    for key in orphans:
        await _plant_orphan(app, key, age_seconds=7200)
    report = await sweep(app.state.database, app.state.storage, grace=timedelta(0))
    assert sorted(report.orphans_removed) == orphans
    assert report.objects_seen == len(orphans) + 1
    assert report.files_seen == 1
    assert report.missing == []
    assert await stored_keys(app) == {await _key_of(app, kept["id"])}
