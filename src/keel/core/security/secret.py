"""The server secret that signs cursors and similar server-made values."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from keel.config import Settings

SECRET_FILE = "secret.key"  # noqa: S105 - a file name


def load_secret(settings: Settings) -> bytes:
    """KEEL_SECRET_KEY, or one generated once into the data folder (development)."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    path = settings.data_dir / SECRET_FILE
    if not path.exists():
        _create_once(path, secrets.token_urlsafe(48))
    return path.read_text().strip().encode()


def _create_once(path: Path, value: str) -> None:
    # Several workers may start at once: O_EXCL lets exactly one write the file.
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(value)
