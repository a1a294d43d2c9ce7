"""The production server configuration for live-server tests.

With `KEEL_TEST_SERVER_CONFIG=production`, every server a test starts with `serve()` runs
as deploy/Dockerfile and deploy/compose.yaml run the API: `KEEL_ENV=production`, several
Uvicorn workers under `keel serve` (KEEL_SERVER_WORKERS, as the image sets it), a signing
key file, a secret key, a metrics token, Redis, and a `keel worker` beside it taking the
jobs. The test's own settings win (a test about a Redis outage keeps its own Redis, one
that asks for `--workers 2` gets two), except that nothing can turn production off.

Production refuses several workers on SQLite or without Redis, so this needs a run on
PostgreSQL and Redis (KEEL_TEST_DATABASE_URL and KEEL_TEST_REDIS_URL).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from redis import Redis

from tests.fixtures import databases

CONFIG_ENV = "KEEL_TEST_SERVER_CONFIG"
WORKERS_ENV = "KEEL_TEST_SERVER_WORKERS"
PRODUCTION = "production"
DEFAULT_WORKERS = 2


def requested() -> bool:
    value = os.environ.get(CONFIG_ENV, "")
    if value not in {"", PRODUCTION}:
        raise ValueError(f"{CONFIG_ENV} is '{value}': set it to '{PRODUCTION}' or leave it unset")
    return value == PRODUCTION


def missing_services() -> list[str]:
    """What a production-configured run lacks, by variable name (empty: nothing)."""
    return [
        name for name in (databases.DATABASE_ENV, databases.REDIS_ENV) if not os.environ.get(name)
    ]


def write_signing_key(folder: Path) -> Path:
    """A P-256 PEM, as an operator makes with openssl (deploy/README.md)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "signing-key.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def jobs_on_redis(env: dict[str, str]) -> bool:
    return bool(env.get("KEEL_REDIS_URL")) and env.get("KEEL_JOBS_BACKEND", "auto") != "inprocess"


def metrics_headers(env: dict[str, str]) -> dict[str, str]:
    token = env.get("KEEL_METRICS_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextlib.contextmanager
def configured(workdir: Path, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """`env` with the production settings added where the test set none; the Redis keys
    of a prefix made here are deleted afterwards."""
    redis_url = os.environ.get(databases.REDIS_ENV, "")
    if missing_services() or not redis_url:
        raise RuntimeError(
            f"{CONFIG_ENV}={PRODUCTION} needs {' and '.join(missing_services())}: production "
            "refuses several workers on SQLite or on in-process backends"
        )
    prefix = f"keel-test-prod-{uuid.uuid4().hex[:12]}:"
    overlay = {
        "KEEL_SERVER_WORKERS": os.environ.get(WORKERS_ENV, str(DEFAULT_WORKERS)),
        "KEEL_SECRET_KEY": secrets.token_urlsafe(32),
        "KEEL_METRICS_TOKEN": secrets.token_urlsafe(16),
        "KEEL_AUTH_SIGNING_KEY_FILES": json.dumps([str(write_signing_key(workdir / "secrets"))]),
        "KEEL_REDIS_URL": redis_url,
        "KEEL_REDIS_KEY_PREFIX": prefix,
    }
    if "KEEL_REDIS_URL" in env:  # the test's own Redis, with its own prefix
        del overlay["KEEL_REDIS_URL"], overlay["KEEL_REDIS_KEY_PREFIX"]
    try:
        yield {**overlay, **env, "KEEL_ENV": PRODUCTION}
    finally:
        if "KEEL_REDIS_KEY_PREFIX" in overlay:
            _delete_keys(redis_url, prefix)


def _delete_keys(url: str, prefix: str) -> None:
    client = Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
