"""The production configuration of deploy/, started here as its containers would start:
the image's venv (built from the Dockerfile's builder stage), the compose `migrate`
command, then the image's CMD (`keel serve`, its own process manager, with the compose
api's KEEL_SERVER_WORKERS=4) and the compose worker's command, with the image's ENV and
the compose file's settings. Only what points at other containers is pointed at this
machine's: PostgreSQL and Redis of the test run, moto as the S3 store, a signing key file
for the mounted secret, a free loopback port, and 127.0.0.1 for the CMD's 0.0.0.0.

Production refuses several workers on SQLite or without Redis: on a run without
KEEL_TEST_DATABASE_URL and KEEL_TEST_REDIS_URL the refusal itself is what is tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from tests.deploy import compose
from tests.deploy.dockerfile import exec_form, parse
from tests.deploy.test_compose import FILLED_IN
from tests.fixtures import databases, s3
from tests.support import production
from tests.support.servers import (
    HOST,
    Server,
    clean_env,
    free_port,
    stop,
    wait_for_exit,
    wait_until_healthy,
    wait_until_refused,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PASSWORD = "a long and uncommon passphrase"
# Replaced by this machine's services: the compose value each must have had.
CONTAINER_ADDRESSES = {
    "KEEL_DATABASE_URL": "postgresql+asyncpg://keel:pg-password@postgres:5432/keel",
    "KEEL_REDIS_URL": "redis://redis:6379/0",
    "KEEL_STORAGE_S3_ENDPOINT_URL": "http://minio:9000",
    "KEEL_STORAGE_S3_BUCKET": "keel",
    "KEEL_AUTH_SIGNING_KEY_FILES": '["/run/secrets/keel_signing_key"]',
    "AWS_ACCESS_KEY_ID": FILLED_IN["MINIO_ROOT_USER"],
    "AWS_SECRET_ACCESS_KEY": FILLED_IN["MINIO_ROOT_PASSWORD"],
}


def image_command(name: str = "api") -> list[str]:
    """The compose service's command: the image's CMD for the api, loopback for 0.0.0.0
    (tests listen on loopback only)."""
    service = compose.load()["services"][name]
    command = service.get("command") or exec_form(parse().stage("runtime").one("CMD"))
    return [HOST if part == "0.0.0.0" else str(part) for part in command]  # noqa: S104


def image_env(venv: Path, data_dir: Path) -> dict[str, str]:
    """The image's ENV, its venv first on the path (the image's /app/.venv), its data
    folder here; nothing from the repository importable."""
    env = clean_env()
    env.pop("PYTHONPATH")
    env |= parse().stage("runtime").env()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"
    env["KEEL_DATA_DIR"] = str(data_dir)
    return env


def container_env(
    service: str, venv: Path, data_dir: Path, local: dict[str, str]
) -> dict[str, str]:
    """image_env, then the compose service's environment, then `local` for what points
    at other containers."""
    env = image_env(venv, data_dir)
    settings = compose.environment(compose.load()["services"][service], FILLED_IN)
    for name in local:
        if name in settings:
            assert settings[name] == CONTAINER_ADDRESSES.get(name, settings[name]), name
    return env | settings | local


@dataclass
class Deployment:
    api: Server
    worker: Server
    data_dir: Path
    bucket: str
    s3_endpoint: str

    @property
    def metrics_token(self) -> str:
        return self.api.env["KEEL_METRICS_TOKEN"]


def _start(command: list[str], workdir: Path, env: dict[str, str], port: int, tag: str) -> Server:
    stdout, stderr = workdir / f"{tag}.out", workdir / f"{tag}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=out, stderr=err, start_new_session=True
        )
    return Server(process, port, stdout, stderr, env)


@contextlib.contextmanager
def _stopped_at_the_end(*servers: Server) -> Iterator[None]:
    try:
        yield
    finally:
        for server in servers:
            stop(server.process)


@contextlib.asynccontextmanager
async def deployed(workdir: Path, venv: Path, s3_endpoint: str) -> AsyncIterator[Deployment]:
    """migrate, then api and worker, as compose orders them; everything removed after."""
    server_url = os.environ[databases.DATABASE_ENV]
    database_url = await databases.create_postgres_database(server_url)
    prefix = f"keel-test-deploy-{uuid.uuid4().hex[:12]}:"
    redis_url = os.environ[databases.REDIS_ENV]
    data_dir = workdir / "data"
    data_dir.mkdir()
    bucket = s3.new_bucket(s3_endpoint)
    port = free_port()
    local = {
        "KEEL_DATABASE_URL": database_url,
        "KEEL_REDIS_URL": redis_url,
        "KEEL_REDIS_KEY_PREFIX": prefix,
        "KEEL_STORAGE_S3_ENDPOINT_URL": s3_endpoint,
        "KEEL_STORAGE_S3_BUCKET": bucket,
        "KEEL_AUTH_SIGNING_KEY_FILES": json.dumps(
            [str(production.write_signing_key(workdir / "secrets"))]
        ),
        **s3.CREDENTIALS,
        "KEEL_SERVER_PORT": str(port),
        "KEEL_FIRST_ADMIN_EMAIL": "admin@example.com",
        "KEEL_FIRST_ADMIN_PASSWORD": PASSWORD,
    }
    try:
        migrate_env = container_env("migrate", venv, data_dir, local)
        migrated = subprocess.run(
            image_command("migrate"), cwd=workdir, env=migrate_env, capture_output=True, check=False
        )
        assert migrated.returncode == 0, migrated.stderr.decode(errors="replace")
        api_env = container_env("api", venv, data_dir, local)
        assert api_env["KEEL_SERVER_WORKERS"] == "4"
        assert api_env["KEEL_ENV"] == "production"
        api = _start(image_command("api"), workdir, api_env, port, "api")
        worker_local = {**local, "KEEL_JOBS_WORKER_METRICS_PORT": str(free_port())}
        worker_env = container_env("worker", venv, data_dir, worker_local)
        worker_env["KEEL_SERVER_HOST"] = HOST  # its metrics on loopback, not 0.0.0.0
        worker = _start(image_command("worker"), workdir, worker_env, 0, "worker")
        with _stopped_at_the_end(api, worker):
            await wait_until_healthy(api)
            yield Deployment(api, worker, data_dir, bucket, s3_endpoint)
    finally:
        await databases.delete_keys(redis_url, prefix)
        await databases.drop_postgres_database(server_url, database_url)


@pytest.fixture
def shared_services() -> None:
    if production.missing_services():
        pytest.skip(f"needs {' and '.join(production.missing_services())}")


@pytest.fixture(scope="module")
async def deployment(
    tmp_path_factory: pytest.TempPathFactory, image_venv: Path, s3_endpoint: str
) -> AsyncIterator[Deployment | None]:
    if production.missing_services():
        yield None
        return
    async with deployed(tmp_path_factory.mktemp("deployed"), image_venv, s3_endpoint) as running:
        yield running


@pytest.fixture
def live(shared_services: None, deployment: Deployment | None) -> Deployment:
    assert deployment is not None
    return deployment


async def access_token(base_url: str, email: str) -> str:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        answer = await client.post(
            "/api/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": PASSWORD},
        )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


async def new_user(base_url: str) -> tuple[str, dict[str, str]]:
    email = f"deploy-{uuid.uuid4().hex[:10]}@example.com"
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        registered = await client.post(
            "/api/v1/auth/register", json={"email": email, "password": PASSWORD}
        )
    assert registered.status_code == 201, registered.text
    return email, {"Authorization": f"Bearer {await access_token(base_url, email)}"}


# --- without PostgreSQL and Redis: what production refuses ------------------------------


async def test_the_image_refuses_to_start_on_the_embedded_backends(
    image_venv: Path, tmp_path: Path
) -> None:
    """The image's CMD and ENV alone (no compose settings): one line per missing piece."""
    env = image_env(image_venv, tmp_path / "data")
    refused = subprocess.run(
        image_command("api"),
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    problems = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    named = {
        name
        for name in (
            "KEEL_AUTH_SIGNING_KEY_FILES",
            "KEEL_SECRET_KEY",
            "KEEL_METRICS_TOKEN",
            "KEEL_DATABASE_URL",
            "KEEL_REDIS_URL",
        )
        if any(name in line for line in problems)
    }
    assert len(named) == 5, refused.stderr
    assert not (tmp_path / "data" / "keel.db").exists()


# --- the production configuration serving -------------------------------------------


async def test_health_ready_and_the_image_health_check(live: Deployment) -> None:
    async with httpx.AsyncClient(base_url=live.api.url, timeout=10) as client:
        health = await client.get("/health")
        ready = await client.get("/ready")
        docs = await client.get("/docs")
        metrics_without_token = await client.get("/metrics")
        metrics = await client.get(
            "/metrics", headers={"Authorization": f"Bearer {live.metrics_token}"}
        )
    assert health.status_code == 200
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "redis": "ok", "migrations": "ok"}
    assert docs.status_code == 404  # production hides the docs
    assert metrics_without_token.status_code == 401
    assert metrics.status_code == 200
    assert "keel_http_requests_total" in metrics.text
    # The Dockerfile's HEALTHCHECK command, run as Docker would inside the container.
    check = exec_form(parse().stage("runtime").one("HEALTHCHECK"))
    healthy = subprocess.run(check, env=live.api.env, capture_output=True, check=False)
    assert healthy.returncode == 0, healthy.stderr
    down_env = {**live.api.env, "KEEL_SERVER_PORT": str(free_port())}
    unhealthy = subprocess.run(check, env=down_env, capture_output=True, check=False)
    assert unhealthy.returncode != 0


async def test_accounts_and_items(live: Deployment) -> None:
    _email, headers = await new_user(live.api.url)
    async with httpx.AsyncClient(base_url=live.api.url, headers=headers, timeout=10) as client:
        created = await client.post("/api/v1/items", json={"title": "deployed"})
        assert created.status_code == 201, created.text
        item = created.json()
        path = f"/api/v1/items/{item['id']}"
        read = await client.get(path)
        assert read.status_code == 200
        assert read.json()["title"] == "deployed"
        patched = await client.patch(
            path, json={"title": "patched"}, headers={"If-Match": read.headers["ETag"]}
        )
        assert patched.status_code == 200, patched.text
        listed = await client.get("/api/v1/items")
        assert [each["title"] for each in listed.json()["data"]] == ["patched"]
        assert (await client.delete(path)).status_code == 204
        assert (await client.get(path)).status_code == 404


async def test_a_file_goes_to_the_s3_store_and_comes_back(live: Deployment) -> None:
    _email, headers = await new_user(live.api.url)
    content = b"stored through the production configuration\n"
    async with httpx.AsyncClient(base_url=live.api.url, headers=headers, timeout=30) as client:
        uploaded = await client.post(
            "/api/v1/files", files={"file": ("note.txt", content, "text/plain")}
        )
        assert uploaded.status_code == 201, uploaded.text
        stored = uploaded.json()
        assert stored["sha256"] == hashlib.sha256(content).hexdigest()
        downloaded = await client.get(f"/api/v1/files/{stored['id']}/content")
    assert downloaded.status_code == 200
    assert downloaded.content == content
    assert len(s3.object_keys(live.s3_endpoint, live.bucket)) == 1


async def test_a_room_message_reaches_every_connection(live: Deployment) -> None:
    """Connections spread over the four workers; Redis carries the message between them."""
    _email, headers = await new_user(live.api.url)
    url = live.api.url.replace("http://", "ws://") + "/api/v1/realtime"
    async with contextlib.AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(connect(url, additional_headers=headers))
            for _ in range(8)
        ]
        for ws in sockets:
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ready"
            await ws.send(orjson.dumps({"type": "subscribe", "channel": "room:deploy"}).decode())
            subscribed = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            assert subscribed == {"type": "subscribed", "channel": "room:deploy"}
        frame = {"type": "publish", "channel": "room:deploy", "data": {"hello": "workers"}}
        await sockets[0].send(orjson.dumps(frame).decode())
        for ws in sockets:
            message = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            assert message["type"] == "message"
            assert message["data"] == {"hello": "workers"}


async def test_jobs_run_on_the_worker(live: Deployment) -> None:
    """Registration's e-mail is a job: the API enqueues it on Redis, `keel worker` sends it
    (console backend: an .eml file in the shared data folder)."""
    email, _headers = await new_user(live.api.url)
    mail_dir = live.data_dir / "mail"
    for _attempt in range(200):
        if any(email in path.read_text(errors="replace") for path in mail_dir.glob("*.eml")):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail(f"no e-mail to {email}:\n{live.worker.output()}")
    worker_log = live.worker.stdout.read_text(errors="replace")
    assert any('"mail_written"' in line and email in line for line in worker_log.splitlines()), (
        worker_log
    )
    assert email not in live.api.stdout.read_text(errors="replace")


async def test_sigterm_drains_a_download_in_flight(
    shared_services: None, tmp_path: Path, image_venv: Path, s3_endpoint: str
) -> None:
    """A 24 MiB download (more than the sockets buffer) is being read when the API gets
    SIGTERM: the listener closes, the download completes whole, the process exits 0."""
    line = b"the production configuration drains what is in flight\n"
    content = line * (24 * 1024 * 1024 // len(line))
    async with deployed(tmp_path, image_venv, s3_endpoint) as live:
        _email, headers = await new_user(live.api.url)
        async with httpx.AsyncClient(base_url=live.api.url, headers=headers, timeout=60) as client:
            uploaded = await client.post(
                "/api/v1/files", files={"file": ("big.txt", content, "text/plain")}
            )
            assert uploaded.status_code == 201, uploaded.text
            path = f"/api/v1/files/{uploaded.json()['id']}/content"
            digest = hashlib.sha256()
            async with client.stream("GET", path) as response:
                assert response.status_code == 200
                chunks = response.aiter_raw(64 * 1024)
                first = await anext(chunks)
                digest.update(first)
                received = len(first)
                assert received < len(content)
                live.api.process.send_signal(signal.SIGTERM)
                live.worker.process.send_signal(signal.SIGTERM)
                await wait_until_refused(live.api.port, timeout=10)
                async for chunk in chunks:
                    digest.update(chunk)
                    received += len(chunk)
        assert received == len(content)
        assert digest.hexdigest() == hashlib.sha256(content).hexdigest()
        grace = float(live.api.env.get("KEEL_SERVER_GRACEFUL_TIMEOUT", "30"))
        assert await wait_for_exit(live.api.process, timeout=grace + 10) == 0, live.api.output()
        assert await wait_for_exit(live.worker.process, timeout=grace + 10) == 0
        assert "resources_closed" in live.api.log_events(), live.api.output()
