"""Access-token signing keys: ES256 (P-256), each `kid` the key's RFC 7638 thumbprint.

Configured: PEM files in KEEL_AUTH_SIGNING_KEY_FILES, newest first; the first signs, all
verify. Otherwise (development) keys are generated into `<data_dir>/keys/`; `rotate`
retires the signing key, which stays published until the tokens it signed have expired.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import AwareDatetime, BaseModel, Field

from keel.config import Settings

Clock = Callable[[], datetime]
MANIFEST = "manifest.json"


def utc_now() -> datetime:
    return datetime.now(UTC)


class SigningKeyError(ValueError):
    """A key file or the manifest cannot be used. Names the path, never key material."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    n = key.public_numbers()
    x, y = _b64(n.x.to_bytes(32, "big")), _b64(n.y.to_bytes(32, "big"))
    return {"kty": "EC", "crv": "P-256", "x": x, "y": y}


def thumbprint(key: ec.EllipticCurvePublicKey) -> str:
    # RFC 7638: exactly the required members, keys sorted, no whitespace.
    canonical = json.dumps(public_jwk(key), sort_keys=True, separators=(",", ":"))
    return _b64(hashlib.sha256(canonical.encode()).digest())


def load_pem_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"signing key {path}: cannot read ({exc.strerror})") from None
    try:
        key = ser.load_pem_private_key(data, password=None)
    except TypeError:
        raise SigningKeyError(f"signing key {path}: encrypted PEM is not supported") from None
    except ValueError:
        # cryptography's message is not shown: it could echo part of the file.
        raise SigningKeyError(f"signing key {path}: not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise SigningKeyError(f"signing key {path}: not a P-256 (ES256) EC key")
    return key


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)


@dataclass(frozen=True, slots=True)
class PublicKey:
    kid: str
    key: ec.EllipticCurvePublicKey
    source: Literal["configured", "generated"]
    # No token it signed is alive after this, so it is dropped. None: kept while listed.
    valid_until: datetime | None = None

    def is_live(self, now: datetime) -> bool:
        return self.valid_until is None or now < self.valid_until


class KeyRing:
    """The signing key and every public key whose tokens may still be alive."""

    def __init__(
        self, signing_key: SigningKey, keys: Sequence[PublicKey], *, now: Clock = utc_now
    ) -> None:
        self.signing_key = signing_key
        self.keys = tuple(keys)
        self._by_kid = {key.kid: key for key in self.keys}
        self._now = now

    @classmethod
    def load(cls, settings: Settings, *, now: Clock = utc_now) -> KeyRing:
        if files := settings.auth.signing_key_files:
            keys = {thumbprint(k.public_key()): k for k in map(load_pem_key, files)}
            first = next(iter(keys))  # a dict keeps the files' order: the first one signs
            public = [PublicKey(kid, k.public_key(), "configured") for kid, k in keys.items()]
            return cls(SigningKey(first, keys[first]), public, now=now)
        if settings.is_production:
            raise SigningKeyError("production needs KEEL_AUTH_SIGNING_KEY_FILES")
        return GeneratedKeys(settings, now=now).ring()

    def public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        key = self._by_kid.get(kid)
        if key is None or not key.is_live(self._now()):
            return None
        return key.key

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        live = [key for key in self.keys if key.is_live(self._now())]
        jwk = {"use": "sig", "alg": "ES256"}
        return {"keys": [{**public_jwk(k.key), "kid": k.kid, **jwk} for k in live]}


class Entry(BaseModel):
    """One manifest record: a generated key's file and lifetime."""

    kid: str
    file: str = Field(pattern=r"^[A-Za-z0-9_-]+\.pem$")  # a name inside the keys folder
    created_at: AwareDatetime
    retired_at: AwareDatetime | None = None


class Manifest(BaseModel):
    keys: list[Entry]  # newest first


def rotate(settings: Settings, *, now: Clock = utc_now) -> KeyRing:
    """Add a generated signing key and retire the current one; returns the new ring."""
    return GeneratedKeys(settings, now=now).rotate()


class GeneratedKeys:
    """Keys in `<data_dir>/keys/`: PEM files (0600) and `manifest.json`."""

    def __init__(self, settings: Settings, *, now: Clock = utc_now) -> None:
        self.dir = settings.data_dir / "keys"
        self.ttl = timedelta(seconds=settings.auth.access_token_ttl_seconds)
        self._now = now

    def read(self) -> list[Entry] | None:
        path = self.dir / MANIFEST
        try:
            return Manifest.model_validate_json(path.read_bytes()).keys
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise SigningKeyError(
                f"key manifest {path}: unreadable ({type(exc).__name__})"
            ) from None

    def ensure(self) -> list[Entry]:
        # Workers starting at once each link their own new manifest into place: one wins,
        # the others drop their key and read the winner's, so all sign with the same key.
        entries = self.read()
        if entries is not None:
            return entries
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        entry = self._new_key()
        if self._write([entry], exclusive=True):
            return [entry]
        (self.dir / entry.file).unlink(missing_ok=True)
        return self.read() or []  # the winner's; [] only if it was deleted meanwhile

    def ring(self) -> KeyRing:
        entries = self.ensure()
        if not entries or entries[0].retired_at is not None:
            raise SigningKeyError(f"key manifest {self.dir / MANIFEST}: no current key")
        keys = [load_pem_key(self.dir / e.file) for e in entries]
        public: list[PublicKey] = []
        for e, key in zip(entries, keys, strict=True):
            if thumbprint(key.public_key()) != e.kid:
                raise SigningKeyError(f"signing key {self.dir / e.file}: kid mismatch")
            until = e.retired_at + self.ttl if e.retired_at else None
            public.append(PublicKey(e.kid, key.public_key(), "generated", until))
        return KeyRing(SigningKey(entries[0].kid, keys[0]), public, now=self._now)

    def rotate(self) -> KeyRing:
        with self._lock():  # two rotations at once would lose one's key
            now = self._now()
            old = [
                e if e.retired_at else e.model_copy(update={"retired_at": now})
                for e in self.ensure()
            ]
            kept = [e for e in old if e.retired_at and now < e.retired_at + self.ttl]
            new = self._new_key()
            self._write([new, *kept], exclusive=False)
            for gone in old:
                if gone not in kept:
                    (self.dir / gone.file).unlink(missing_ok=True)
        return self.ring()

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _new_key(self) -> Entry:
        key = ec.generate_private_key(ec.SECP256R1())
        kid = thumbprint(key.public_key())
        pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
        self._create(self.dir / f"{kid}.pem", pem)
        return Entry(kid=kid, file=f"{kid}.pem", created_at=self._now())

    def _write(self, entries: list[Entry], *, exclusive: bool) -> bool:
        """Put the manifest in place whole; False if `exclusive` and one exists."""
        temp = self.dir / f".manifest-{secrets.token_hex(8)}.tmp"
        self._create(temp, Manifest(keys=entries).model_dump_json(indent=2).encode())
        try:
            # link fails if the name exists; replace swaps atomically: readers see either
            # the old manifest or the new one, never half of one.
            if exclusive:
                os.link(temp, self.dir / MANIFEST)
            else:
                temp.replace(self.dir / MANIFEST)
        except FileExistsError:
            return False
        finally:
            temp.unlink(missing_ok=True)
        return True

    @staticmethod
    def _create(path: Path, data: bytes) -> None:
        # O_EXCL: never write through a file (or link) someone else put there first.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            os.fchmod(fd, 0o600)  # whatever the umask
            file.write(data)
            file.flush()
            os.fsync(fd)
