"""Password policy and hashing (Argon2id through pwdlib), never on the event loop.

Hashing is deliberately slow and memory-hungry, so it runs in worker threads of its
own, at most `hash_concurrency` at once, at a lower scheduling priority than the
event loop: a burst of logins queues instead of exhausting memory, and takes only the
CPU that serving requests leaves (measured: `/health` beside 8 logins in bench/).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from importlib.resources import files
from typing import TypeVar

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from keel.config import AuthSettings

MIN_LENGTH = 8
MAX_LENGTH = 128
# Niceness of the hashing threads (and of Argon2's lane threads, which inherit it): the
# scheduler then gives the event loop's thread about ten times their share of a core.
HASH_THREAD_NICENESS = 10

T = TypeVar("T")


def _lower_priority() -> None:
    # Linux keeps a niceness per thread; elsewhere this may not apply, and hashing then
    # simply runs at the process's priority.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_THREAD_NICENESS)


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
        self._threads = ThreadPoolExecutor(
            max_workers=settings.hash_concurrency or os.cpu_count() or 1,
            thread_name_prefix="keel-hash",
            initializer=_lower_priority,
        )
        # Verified against when the e-mail is unknown, so both paths cost the same.
        self._dummy_hash = self._hash.hash("not a real password, only to spend time")

    async def _off_loop(self, work: Callable[..., T], *args: str) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, work, *args)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def hash(self, password: str) -> str:
        return await self._off_loop(self._hash.hash, password)

    async def verify(self, password: str, hashed: str | None) -> tuple[bool, str | None]:
        """(matches, new hash when the stored one used older parameters).

        With `hashed=None` (no such account) a dummy hash is checked, and the answer
        is always no: the time taken does not tell whether the account exists.
        """
        if hashed is None:
            await self._off_loop(self._hash.verify, password, self._dummy_hash)
            return False, None
        return await self._off_loop(self._hash.verify_and_update, password, hashed)
