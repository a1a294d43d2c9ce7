"""Password policy and hashing (Argon2id through pwdlib), never on the event loop.

Hashing is deliberately slow and memory-hungry, so it runs in worker threads, at most
`hash_concurrency` at once: a burst of logins queues instead of exhausting memory or
starving the event loop.
"""

from __future__ import annotations

import gzip
import os
from functools import cache
from importlib.resources import files

import anyio
from anyio import CapacityLimiter
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from keel.config import AuthSettings

MIN_LENGTH = 8
MAX_LENGTH = 128


@cache
def common_passwords() -> frozenset[str]:
    """Django's list of 20,000 common passwords (BSD licence; see NOTICE in this folder)."""
    data = files("keel.core.security").joinpath("common-passwords.txt.gz").read_bytes()
    return frozenset(gzip.decompress(data).decode().split())


def password_problem(password: str, email: str | None) -> str | None:
    """Why `password` breaks API.md's policy, or None when it is acceptable."""
    if len(password) < MIN_LENGTH:
        return f"Password must have at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"Password must have at most {MAX_LENGTH} characters"
    if email:
        local_part = email.split("@", 1)[0].casefold()
        if len(local_part) >= 3 and local_part in password.casefold():
            return "Password must not contain the e-mail address's name"
    if password.casefold() in common_passwords() or password in common_passwords():
        return "Password is too common"
    return None


class PasswordHasher:
    def __init__(self, settings: AuthSettings) -> None:
        self._hash = PasswordHash(
            (
                Argon2Hasher(
                    time_cost=settings.argon2_time_cost,
                    memory_cost=settings.argon2_memory_kib,
                    parallelism=settings.argon2_parallelism,
                ),
            )
        )
        self._limiter = CapacityLimiter(settings.hash_concurrency or os.cpu_count() or 1)
        # Verified against when the e-mail is unknown, so both paths cost the same.
        self._dummy_hash = self._hash.hash("not a real password, only to spend time")

    async def hash(self, password: str) -> str:
        return await anyio.to_thread.run_sync(self._hash.hash, password, limiter=self._limiter)

    async def verify(self, password: str, hashed: str | None) -> tuple[bool, str | None]:
        """(matches, new hash when the stored one used older parameters).

        With `hashed=None` (no such account) a dummy hash is checked, and the answer
        is always no: the time taken does not tell whether the account exists.
        """
        if hashed is None:
            await anyio.to_thread.run_sync(
                self._hash.verify, password, self._dummy_hash, limiter=self._limiter
            )
            return False, None
        return await anyio.to_thread.run_sync(
            self._hash.verify_and_update, password, hashed, limiter=self._limiter
        )
