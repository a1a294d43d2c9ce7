"""Signing keys: generated once (even by racing workers), rotated, configured from PEM files."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from typer.testing import CliRunner

from keel.cli import app
from keel.config import Settings
from keel.core.security import keys
from keel.core.security.keys import GeneratedKeys, KeyRing, SigningKeyError, thumbprint
from tests.conftest import SettingsFactory

# Tests taking make_settings are async: it rests on the suite's async database fixtures.
pytestmark = pytest.mark.anyio

START = datetime(2030, 1, 1, tzinfo=UTC)
runner = CliRunner()


class FakeClock:
    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def dev_settings(make_settings: SettingsFactory, tmp_path: Path) -> Settings:
    return make_settings(data_dir=tmp_path, auth={"access_token_ttl_seconds": 30})


def write_pem(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def manifest(settings: Settings) -> dict[str, list[dict[str, str]]]:
    data: dict[str, list[dict[str, str]]] = json.loads(
        (settings.data_dir / "keys" / "manifest.json").read_text()
    )
    return data


def test_kid_is_the_rfc7638_thumbprint() -> None:
    public = p256().public_key()
    numbers = public.public_numbers()

    def b64(value: int) -> str:
        return base64.urlsafe_b64encode(value.to_bytes(32, "big")).rstrip(b"=").decode()

    # RFC 7638 §3: members in lexicographic order, no whitespace.
    canonical = f'{{"crv":"P-256","kty":"EC","x":"{b64(numbers.x)}","y":"{b64(numbers.y)}"}}'
    digest = hashlib.sha256(canonical.encode()).digest()
    assert thumbprint(public) == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def test_generated_key_is_created_once_and_reused(dev_settings: Settings) -> None:
    first = KeyRing.load(dev_settings)
    second = KeyRing.load(dev_settings)
    assert first.signing_key.kid == second.signing_key.kid
    assert first.signing_key.kid == thumbprint(first.signing_key.private_key.public_key())
    assert [entry["kid"] for entry in manifest(dev_settings)["keys"]] == [first.signing_key.kid]
    assert len(list((dev_settings.data_dir / "keys").glob("*.pem"))) == 1


async def test_key_files_are_readable_by_the_owner_only(dev_settings: Settings) -> None:
    KeyRing.load(dev_settings)
    folder = dev_settings.data_dir / "keys"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in [*folder.glob("*.pem"), folder / "manifest.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


LOAD_AT = """
import sys, time
from keel.config import Settings
from keel.core.security.keys import KeyRing
settings = Settings(_env_file=None, env="test", data_dir=sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
print(KeyRing.load(settings).signing_key.kid)
"""


def test_workers_starting_at_once_end_with_one_key(tmp_path: Path) -> None:
    # Each process imports first, then all call KeyRing.load at the same instant.
    go = time.time() + 3
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", LOAD_AT, str(tmp_path), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    results = [worker.communicate(timeout=60) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), results
    kids = {out.strip() for out, _ in results}
    assert len(kids) == 1
    assert len(list((tmp_path / "keys").glob("*.pem"))) == 1  # the losers removed theirs
    assert not list((tmp_path / "keys").glob(".manifest-*"))


async def test_losing_the_race_adopts_the_winners_key(
    dev_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    winner = KeyRing.load(dev_settings).signing_key.kid
    # As if this worker had looked just before the winner's manifest appeared.
    reads = iter([None])
    real_read = GeneratedKeys.read
    monkeypatch.setattr(GeneratedKeys, "read", lambda self: next(reads, real_read(self)))
    assert GeneratedKeys(dev_settings).ring().signing_key.kid == winner
    assert len(list((dev_settings.data_dir / "keys").glob("*.pem"))) == 1


async def test_jwks_publishes_the_public_key_only(dev_settings: Settings) -> None:
    ring = KeyRing.load(dev_settings)
    (published,) = ring.jwks()["keys"]
    assert set(published) == {"kty", "crv", "x", "y", "kid", "use", "alg"}
    assert published["kid"] == ring.signing_key.kid
    assert (published["use"], published["alg"], published["crv"]) == ("sig", "ES256", "P-256")
    parsed = jwt.PyJWK(published).key
    assert parsed.public_numbers() == ring.signing_key.private_key.public_key().public_numbers()


async def test_rotation_keeps_the_old_key_published_until_its_tokens_expire(
    dev_settings: Settings,
) -> None:
    clock = FakeClock()
    old = KeyRing.load(dev_settings, now=clock).signing_key.kid
    clock.advance(5)
    retired_at = clock.now
    ring = keys.rotate(dev_settings, now=clock)
    new = ring.signing_key.kid
    assert new != old
    assert [entry["kid"] for entry in manifest(dev_settings)["keys"]] == [new, old]
    assert manifest(dev_settings)["keys"][1]["retired_at"] is not None
    assert KeyRing.load(dev_settings, now=clock).signing_key.kid == new

    clock.advance(29)  # ttl is 30 s
    assert {key["kid"] for key in ring.jwks()["keys"]} == {new, old}
    assert ring.public_key(old) is not None

    clock.now = retired_at + timedelta(seconds=30)
    assert [key["kid"] for key in ring.jwks()["keys"]] == [new]
    assert ring.public_key(old) is None

    # The next rotation forgets it altogether, file included.
    newest = keys.rotate(dev_settings, now=clock).signing_key.kid
    assert [entry["kid"] for entry in manifest(dev_settings)["keys"]] == [newest, new]
    assert not (dev_settings.data_dir / "keys" / f"{old}.pem").exists()


async def test_configured_files_sign_with_the_first_and_publish_all(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    newest, older = p256(), p256()
    files = [write_pem(tmp_path / "new.pem", newest), write_pem(tmp_path / "old.pem", older)]
    settings = make_settings(data_dir=tmp_path / "data", auth={"signing_key_files": files})
    ring = KeyRing.load(settings)
    assert ring.signing_key.kid == thumbprint(newest.public_key())
    kids = [key["kid"] for key in ring.jwks()["keys"]]
    assert kids == [thumbprint(newest.public_key()), thumbprint(older.public_key())]
    assert ring.public_key(kids[1]) is not None
    assert not (tmp_path / "data" / "keys").exists()  # nothing generated


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "cannot read"),
        (b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0IGJ5dGVz\n-----END PRIVATE KEY-----\n", "PEM"),
        (b"not a key at all", "not a PEM private key"),
        ("rsa", "not a P-256"),
        ("p384", "not a P-256"),
        ("encrypted", "encrypted PEM"),
    ],
)
async def test_a_bad_key_file_is_a_clear_error(
    make_settings: SettingsFactory, tmp_path: Path, content: bytes | str | None, reason: str
) -> None:
    path = tmp_path / "signing.pem"
    if content == "rsa":
        write_pem(path, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    elif content == "p384":
        write_pem(path, ec.generate_private_key(ec.SECP384R1()))
    elif content == "encrypted":
        path.write_bytes(
            p256().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"passphrase"),
            )
        )
    elif isinstance(content, bytes):
        path.write_bytes(content)
    settings = make_settings(data_dir=tmp_path, auth={"signing_key_files": [path]})
    with pytest.raises(SigningKeyError) as caught:
        KeyRing.load(settings)
    message = str(caught.value)
    assert str(path) in message
    assert reason in message
    assert "c2VjcmV0" not in message
    assert "BEGIN" not in message


async def test_a_damaged_manifest_is_a_clear_error(dev_settings: Settings) -> None:
    KeyRing.load(dev_settings)
    path = dev_settings.data_dir / "keys" / "manifest.json"
    path.write_text('{"keys": [{"kid": "x", "file": "../../etc/passwd"}]}')
    with pytest.raises(SigningKeyError, match="manifest"):
        KeyRing.load(dev_settings)


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        ("retire", "no current key"),  # every key retired: nothing to sign with
        ("kid", "kid mismatch"),  # the manifest and the file disagree
    ],
)
async def test_an_inconsistent_manifest_is_a_clear_error(
    dev_settings: Settings, spoil: str, reason: str
) -> None:
    KeyRing.load(dev_settings)
    path = dev_settings.data_dir / "keys" / "manifest.json"
    data = json.loads(path.read_text())
    if spoil == "retire":
        data["keys"][0]["retired_at"] = START.isoformat()
    else:
        data["keys"][0]["kid"] = "A" * 43
    path.write_text(json.dumps(data))
    with pytest.raises(SigningKeyError, match=reason):
        KeyRing.load(dev_settings)


async def test_production_never_generates_a_key(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    settings = make_settings(data_dir=tmp_path, env="production")
    with pytest.raises(SigningKeyError, match="KEEL_AUTH_SIGNING_KEY_FILES"):
        KeyRing.load(settings)
    assert not (tmp_path / "keys").exists()


def test_keys_list_and_rotate_commands(cli_env: Path) -> None:
    empty = runner.invoke(app, ["keys", "list"])
    assert empty.exit_code == 0, empty.output
    assert "No key yet" in empty.output
    assert not (cli_env / "keys").exists()

    settings = Settings(_env_file=None, data_dir=cli_env)
    old = KeyRing.load(settings).signing_key.kid
    rotated = runner.invoke(app, ["keys", "rotate"])
    assert rotated.exit_code == 0, rotated.output
    new = KeyRing.load(settings).signing_key.kid
    assert f"New signing key: {new}" in rotated.output
    assert "Still published until" in rotated.output
    assert old in rotated.output

    listed = runner.invoke(app, ["keys", "list"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0] == f"{new}  generated  signing"
    assert lines[1].startswith(f"{old}  generated  retired, published until ")


def test_keys_rotate_refuses_configured_keys(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = write_pem(cli_env / "signing.pem", p256())
    monkeypatch.setenv("KEEL_AUTH_SIGNING_KEY_FILES", json.dumps([str(key_file)]))
    result = runner.invoke(app, ["keys", "rotate"])
    assert result.exit_code == 2
    assert "KEEL_AUTH_SIGNING_KEY_FILES" in result.output
    assert "first" in result.output
    assert not (cli_env / "keys").exists()

    listed = runner.invoke(app, ["keys", "list"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.strip() == f"{thumbprint(p256_of(key_file))}  configured  signing"


def test_keys_list_names_a_bad_key_file(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = cli_env / "missing.pem"
    monkeypatch.setenv("KEEL_AUTH_SIGNING_KEY_FILES", json.dumps([str(missing)]))
    result = runner.invoke(app, ["keys", "list"])
    assert result.exit_code == 2
    assert f"error: signing key {missing}: cannot read" in result.output


def p256_of(path: Path) -> ec.EllipticCurvePublicKey:
    return keys.load_pem_key(path).public_key()
