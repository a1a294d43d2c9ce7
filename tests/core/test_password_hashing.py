"""Password hashing runs off the event loop, below its scheduling priority."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from keel.config import AuthSettings
from keel.core.security.passwords import HASH_THREAD_NICENESS, PasswordHasher

pytestmark = pytest.mark.anyio


def cheap_hasher() -> PasswordHasher:
    return PasswordHasher(
        AuthSettings(argon2_time_cost=1, argon2_memory_kib=1024, argon2_parallelism=1)
    )


async def test_hashes_verify_and_run_off_the_event_loop() -> None:
    hasher = cheap_hasher()
    try:
        hashed = await hasher.hash("a long enough passphrase")
        assert await hasher.verify("a long enough passphrase", hashed) == (True, None)
        assert (await hasher.verify("another passphrase", hashed))[0] is False
        assert await hasher.verify("anything", None) == (False, None)
        loop_thread = threading.get_ident()
        ran_on = await hasher._off_loop(lambda _: str(threading.get_ident()), "x")
        assert int(ran_on) != loop_thread
    finally:
        hasher.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
async def test_hashing_threads_yield_to_the_event_loop() -> None:
    hasher = cheap_hasher()
    try:

        def niceness(_: str) -> str:
            return str(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

        loop_niceness = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        hashing_niceness = int(await hasher._off_loop(niceness, "x"))
        assert hashing_niceness == HASH_THREAD_NICENESS != loop_niceness
        # The event loop's own thread keeps its priority.
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == loop_niceness
    finally:
        hasher.close()
