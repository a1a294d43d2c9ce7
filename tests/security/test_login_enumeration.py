"""Sign-in tells nobody which accounts exist: an unknown e-mail and a wrong password
get the same answer, byte for byte, through the rate limit too, and take the same time.

- ASVS 5.0 V6.3.8: valid users cannot be deduced from failed authentication (error
  messages, status codes, response times); forgot-password included.
- RFC 6749 §5.2 (`invalid_grant` for both), API.md "The token endpoint" (the same body
  for an unknown e-mail and a wrong password) and "Auth" (forgot-password: the same
  status and body whether or not the e-mail exists).
- OWASP API Security Top 10 2023 API2 (Broken Authentication: enumeration feeds
  credential stuffing).

tests/auth/test_token.py already compares the bodies of one try each; here the whole
answer (headers included) is compared, over a run of tries that crosses the limit.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest

from keel.models import Role
from tests.auth.test_token import password_login
from tests.conftest import SettingsFactory
from tests.factories.users import make_user, unique_email
from tests.security.support import NO_LIMITS, started

pytestmark = pytest.mark.anyio

# Headers that differ between any two answers: the request's id, the clock, and the
# time the app took (Server-Timing, a measurement). Everything else must be equal.
PER_REQUEST_HEADERS = frozenset({"x-request-id", "date", "server-timing"})
WRONG = "not the password at all"


def _comparable(
    response: httpx.Response, also_ignored: frozenset[str] = frozenset()
) -> tuple[int, dict[str, str], bytes]:
    ignored = PER_REQUEST_HEADERS | also_ignored
    headers = {name: value for name, value in response.headers.items() if name not in ignored}
    # Seconds until the window resets: the same window, read a moment apart, may be a
    # second apart; it must not say more than that.
    reset = headers.pop("ratelimit-reset", None)
    if reset is not None:
        headers["ratelimit-reset"] = f"~{int(reset) // 2}"
    body = response.content
    if response.headers.get("content-type") == "application/json" and b"request_id" in body:
        error = response.json()
        error["error"]["request_id"] = "-"
        body = repr(error).encode()
    return response.status_code, headers, body


def assert_indistinguishable(
    first: httpx.Response, second: httpx.Response, also_ignored: frozenset[str] = frozenset()
) -> None:
    assert _comparable(first, also_ignored) == _comparable(second, also_ignored), (
        first.headers,
        second.headers,
    )


@pytest.mark.parametrize("who", ["wrong-password", "inactive", "unverified-wrong-password"])
async def test_unknown_email_and_a_known_one_answer_alike_through_the_limit(
    make_settings: SettingsFactory, migrated_database: str, who: str
) -> None:
    # Through the per-account limit: an unknown address is limited just like a real
    # one, or the 429 itself would tell them apart.
    settings = make_settings(limit={"token_account": "3/minute", "token_ip": "1000/minute"})
    async with started(settings) as (app, client):
        user = await make_user(
            app, is_active=who != "inactive", is_verified=who != "unverified-wrong-password"
        )
        password = WRONG if who != "inactive" else "correct horse battery staple"
        unknown = unique_email("nobody")
        for attempt in range(5):
            known_answer = await password_login(client, user.email, password)
            unknown_answer = await password_login(client, unknown, password)
            assert known_answer.status_code == (400 if attempt < 3 else 429)
            assert_indistinguishable(known_answer, unknown_answer)


async def test_forgot_password_answers_alike_for_every_address(
    make_settings: SettingsFactory, migrated_database: str
) -> None:
    settings = make_settings(limit={"email_ip": "1000/minute"})
    async with started(settings) as (app, client):
        users = [
            await make_user(app),
            await make_user(app, is_active=False),
            await make_user(app, role=Role.ADMIN),
        ]
        addresses = [unique_email("nobody"), *(user.email for user in users), "NoBody@x.io"]
        answers = [
            await client.post("/api/v1/auth/forgot-password", json={"email": address})
            for address in addresses
        ]
        assert answers[0].status_code == 202, answers[0].text
        for answer in answers[1:]:
            # The only limit here is per IP: what is left falls by one with every
            # request, whoever it names; the rest of the answer is the same.
            assert_indistinguishable(answer, answers[0], frozenset({"ratelimit-remaining"}))
        remaining = [int(answer.headers["ratelimit-remaining"]) for answer in answers]
        assert remaining == list(range(remaining[0], remaining[0] - len(answers), -1))


Attempt = Callable[[], Awaitable[httpx.Response]]


async def _timed(attempt: Attempt) -> float:
    started_at = time.perf_counter()
    response = await attempt()
    elapsed = time.perf_counter() - started_at
    assert response.status_code == 400, response.text
    return elapsed


async def test_unknown_email_and_wrong_password_take_the_same_time(
    make_settings: SettingsFactory, migrated_database: str
) -> None:
    """A requirement-level time bound (ASVS V6.3.8: no telling users apart by response
    time): the medians of 30 interleaved tries each lie within 0.8-1.25x of each other.

    Hashes with real cost (OWASP's Argon2id minimum, 19 MiB, t=2), so that skipping the
    hash for an unknown address would show as a many-fold difference, far outside the
    band; the suite's cheap test parameters would hide it in request overhead.
    """
    settings = make_settings(
        auth={"argon2_time_cost": 2, "argon2_memory_kib": 19456, "argon2_parallelism": 1},
        limit=NO_LIMITS,
    )
    async with started(settings) as (app, client):
        user = await make_user(app)
        nobody = unique_email("nobody")

        async def unknown() -> httpx.Response:
            return await password_login(client, nobody, WRONG)

        async def wrong() -> httpx.Response:
            return await password_login(client, user.email, WRONG)

        for attempt in (unknown, wrong):  # warm up both paths (caches, pools, threads)
            await _timed(attempt)
        times: dict[Attempt, list[float]] = {unknown: [], wrong: []}
        shuffle = random.Random(12)
        for _ in range(30):
            pair = [unknown, wrong]
            shuffle.shuffle(pair)
            for attempt in pair:
                times[attempt].append(await _timed(attempt))
        ratio = statistics.median(times[unknown]) / statistics.median(times[wrong])
        assert 0.8 <= ratio <= 1.25, (ratio, times)
