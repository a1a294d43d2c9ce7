"""Rate limits: every check counts, the tightest is reported, Redis shares the counters
between workers, and an unreachable Redis is 503, never a 500 or a free pass."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Annotated, cast

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import JSONResponse
from limits.aio.storage import MemoryStorage
from redis.asyncio import Redis

from keel.config import Settings
from keel.core.client_ip import request_client_ip
from keel.core.errors import NotFound, RateLimited, ServiceUnavailable
from keel.core.ratelimit import (
    RateLimitDecision,
    RateLimiter,
    RateLimiterDep,
    RateLimitHeadersMiddleware,
    _storage_uri,
    get_rate_limiter,
    ip_key,
    per_ip,
    rate_limited,
)
from keel.core.routing import KeelRoute
from tests.conftest import SettingsFactory
from tests.fixtures import databases

pytestmark = pytest.mark.anyio

LIMITS = {
    "token_account": "3/minute",
    "token_ip": "5/minute",
    "register_ip": "3/minute",
    "email_ip": "2/minute",
}
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
RATE_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    # The test client's peer is 127.0.0.1: trusted, so tests can send X-Forwarded-For.
    return make_settings(limit=LIMITS, server={"trusted_proxies": ["127.0.0.1"]})


def fresh_key() -> str:
    return f"test:{uuid.uuid4().hex}"


@pytest.fixture(params=["memory", "redis"])
async def limiter(
    request: pytest.FixtureRequest, make_settings: SettingsFactory
) -> AsyncIterator[RateLimiter]:
    """Each behaviour on both storages (the Redis one only when the run has Redis)."""
    if request.param == "redis":
        request.getfixturevalue("requires_redis")
        settings = make_settings()
    else:
        settings = make_settings(redis={"url": None})
    limiter = RateLimiter.from_settings(settings)
    yield limiter
    await limiter.close()


async def hits(
    limiter: RateLimiter, count: int, *checks: tuple[str, str]
) -> list[RateLimitDecision]:
    return [await limiter.hit(*checks) for _ in range(count)]


def assert_integer_headers(headers: dict[str, str] | httpx.Headers) -> None:
    for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"):
        assert headers[name].isdigit(), (name, headers[name])


# --- the limiter itself ---------------------------------------------------------------


async def test_allows_the_limit_then_refuses(limiter: RateLimiter) -> None:
    key = fresh_key()
    decisions = await hits(limiter, 4, ("3/minute", key))
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    for decision in decisions:
        assert decision.limit == 3
        assert 0 < decision.reset <= 60
        assert_integer_headers(decision.headers)
    assert "Retry-After" not in decisions[2].headers
    refused = decisions[3]
    assert refused.retry_after is not None
    assert 1 <= refused.retry_after <= 60
    assert refused.headers["Retry-After"] == str(refused.retry_after)


async def test_limit_frees_up_when_the_window_passes(limiter: RateLimiter) -> None:
    key = fresh_key()
    first, second, refused = await hits(limiter, 3, ("2/second", key))
    assert first.allowed
    assert second.allowed
    assert not refused.allowed
    assert refused.retry_after == 1
    await asyncio.sleep(1.1)
    again = await limiter.hit(("2/second", key))
    assert again.allowed
    assert again.remaining == 1


async def test_headers_describe_the_check_with_fewest_left(limiter: RateLimiter) -> None:
    loose, tight = fresh_key(), fresh_key()
    decision = await limiter.hit(("10/minute", loose), ("3/minute", tight))
    assert (decision.limit, decision.remaining) == (3, 2)

    # A bigger limit that is nearly spent is the tighter one.
    await hits(limiter, 8, ("10/minute", loose))
    decision = await limiter.hit(("10/minute", loose), ("3/minute", tight))
    assert decision.allowed
    assert (decision.limit, decision.remaining) == (10, 0)


async def test_refused_request_still_counts_in_every_check(limiter: RateLimiter) -> None:
    account, ip = fresh_key(), fresh_key()
    first, refused = await hits(limiter, 2, ("1/minute", account), ("5/minute", ip))
    assert first.allowed
    assert not refused.allowed
    assert (refused.limit, refused.remaining) == (1, 0)
    # Both requests were counted against the IP, the refused one included.
    assert (await limiter.hit(("5/minute", ip))).remaining == 2


async def test_retry_after_waits_for_every_exhausted_check(limiter: RateLimiter) -> None:
    short, long = fresh_key(), fresh_key()
    await limiter.hit(("1/second", short), ("1/minute", long))
    refused = await limiter.hit(("1/second", short), ("1/minute", long))
    assert not refused.allowed
    # Retrying after 1 s would meet the per-minute limit: wait for that one.
    assert refused.limit == 1
    assert refused.retry_after is not None
    assert refused.retry_after > 1
    assert refused.reset == refused.retry_after


async def test_keys_have_separate_budgets(limiter: RateLimiter) -> None:
    exhausted, other = fresh_key(), fresh_key()
    await hits(limiter, 2, ("2/minute", exhausted))
    assert not (await limiter.hit(("2/minute", exhausted))).allowed
    assert (await limiter.hit(("2/minute", other))).allowed


async def test_one_setting_may_hold_several_limits(limiter: RateLimiter) -> None:
    key = fresh_key()
    decisions = await hits(limiter, 3, ("5/minute;2/hour", key))
    assert [d.allowed for d in decisions] == [True, True, False]
    assert decisions[2].limit == 2
    assert decisions[2].reset > 60


async def test_hit_needs_a_check(limiter: RateLimiter) -> None:
    with pytest.raises(ValueError, match="at least one"):
        await limiter.hit()


async def test_refusal_raises_rate_limited_with_the_headers() -> None:
    refused = RateLimitDecision(allowed=False, limit=3, remaining=0, reset=42, retry_after=42)
    with pytest.raises(RateLimited) as caught:
        refused.raise_if_refused()
    assert caught.value.status_code == 429
    assert caught.value.headers == {
        "RateLimit-Limit": "3",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "42",
        "Retry-After": "42",
    }
    RateLimitDecision(allowed=True, limit=3, remaining=1, reset=5).raise_if_refused()


def test_invalid_limit_setting_stops_the_start(make_settings: SettingsFactory) -> None:
    with pytest.raises(ValueError, match="KEEL_LIMIT_TOKEN_IP"):
        RateLimiter.from_settings(make_settings(limit={"token_ip": "plenty"}))


async def test_close_stops_the_memory_sweeper() -> None:
    storage = MemoryStorage()
    limiter = RateLimiter(storage)
    await limiter.hit(("1/minute", fresh_key()))
    await limiter.close()
    assert storage.timer is not None
    assert storage.timer.done()
    await limiter.close()  # twice is harmless


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
        ("unknown", "unknown"),
    ],
)
def test_ip_key_groups_ipv6_by_64(ip: str, key: str) -> None:
    assert ip_key(ip) == key


@pytest.mark.parametrize(
    ("url", "uri"),
    [
        ("redis://localhost:6379/0", "async+redis://localhost:6379/0"),
        ("rediss://:pw@host:6380/1", "async+rediss://:pw@host:6380/1"),
        ("unix:///run/redis.sock?db=2", "async+redis+unix:///run/redis.sock?db=2"),
    ],
)
def test_storage_uri(url: str, uri: str) -> None:
    assert _storage_uri(url) == uri


async def test_rate_limiter_comes_from_the_app_resources() -> None:
    limiter = RateLimiter(MemoryStorage())
    app = SimpleNamespace(state=SimpleNamespace(limiter=limiter))
    assert await get_rate_limiter(cast("Request", SimpleNamespace(app=app))) is limiter


# --- Redis: shared between workers, namespaced, and failing closed ----------------------


async def test_redis_counts_across_workers(
    make_settings: SettingsFactory, requires_redis: str, redis_prefix: str
) -> None:
    # Two limiters with their own connections, as two worker processes would have.
    settings = make_settings()
    first, second = RateLimiter.from_settings(settings), RateLimiter.from_settings(settings)
    key = fresh_key()
    try:
        decisions = [
            await worker.hit(("4/minute", key)) for worker in (first, second, first, second)
        ]
        assert [d.remaining for d in decisions] == [3, 2, 1, 0]
        assert not (await first.hit(("4/minute", key))).allowed
        assert not (await second.hit(("4/minute", key))).allowed
    finally:
        await first.close()
        await second.close()

    redis = Redis.from_url(requires_redis)
    try:
        stored = [k.decode() async for k in redis.scan_iter(match=f"*{key}*")]
    finally:
        await redis.aclose()
    # Under the run's prefix: never shared with another deployment or test run.
    assert stored
    assert all(k.startswith(f"{redis_prefix}ratelimit:") for k in stored)
    await databases.delete_keys(requires_redis, redis_prefix)


async def test_unreachable_redis_is_service_unavailable(
    make_settings: SettingsFactory,
) -> None:
    limiter = RateLimiter.from_settings(make_settings(redis={"url": UNREACHABLE_REDIS}))
    try:
        with pytest.raises(ServiceUnavailable) as caught:
            await limiter.hit(("3/minute", fresh_key()))
    finally:
        await limiter.close()
    assert caught.value.headers["Retry-After"].isdigit()


# --- over HTTP ----------------------------------------------------------------------------

router = APIRouter(prefix="/probe/limits", route_class=KeelRoute)
register_limit = rate_limited(per_ip("probe-register", lambda limits: limits.register_ip))
email_limit = rate_limited(per_ip("probe-email", lambda limits: limits.email_ip))


@router.get("/register", dependencies=[Depends(register_limit)])
async def limited_ok() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/missing", dependencies=[Depends(email_limit)])
async def limited_missing() -> None:
    raise NotFound("Nothing here")


@router.post("/token")
async def token(
    request: Request,
    limiter: RateLimiterDep,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
) -> JSONResponse:
    # The shape of the real token endpoint: the account comes from the form, and the
    # limit is checked before the password is.
    limits = cast("Settings", request.app.state.settings).limit
    ip = request_client_ip(request) or "unknown"
    await limiter.enforce(
        request,
        (limits.token_ip, f"probe-token:ip:{ip_key(ip)}"),
        (limits.token_account, f"probe-token:account:{username.lower()}"),
    )
    if password != "right":
        return JSONResponse({"error": "invalid_grant"}, status_code=400)
    return JSONResponse({"access_token": "issued"})


@pytest.fixture
async def http_limiter(app: FastAPI) -> AsyncIterator[RateLimiter]:
    limiter = RateLimiter.from_settings(app.state.settings)
    yield limiter
    await limiter.close()


@pytest.fixture
async def probe(
    app: FastAPI, client: httpx.AsyncClient, http_limiter: RateLimiter
) -> httpx.AsyncClient:
    # A limiter of the test's own (swappable for a broken one), and the middleware that
    # main.py may add.
    app.dependency_overrides[get_rate_limiter] = lambda: http_limiter
    app.add_middleware(RateLimitHeadersMiddleware)
    app.include_router(router)
    return client


def assert_rate_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "RATE_LIMITED"
    assert error["request_id"] == response.headers["x-request-id"]
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["ratelimit-remaining"] == "0"


async def test_dependency_counts_and_sends_headers(probe: httpx.AsyncClient) -> None:
    for remaining in (2, 1, 0):
        response = await probe.get("/probe/limits/register")
        assert response.status_code == 200
        assert response.headers["ratelimit-limit"] == "3"
        assert response.headers["ratelimit-remaining"] == str(remaining)
        assert 0 < int(response.headers["ratelimit-reset"]) <= 60
        assert "retry-after" not in response.headers
    assert_rate_limited(await probe.get("/probe/limits/register"))


async def test_error_responses_carry_the_headers_too(probe: httpx.AsyncClient) -> None:
    response = await probe.get("/probe/limits/missing")
    assert response.status_code == 404
    assert response.headers["ratelimit-limit"] == "2"
    assert response.headers["ratelimit-remaining"] == "1"


async def test_correct_password_is_refused_while_limited(probe: httpx.AsyncClient) -> None:
    form = {"username": "Ann@Example.com", "password": "wrong"}
    for remaining in (2, 1, 0):
        response = await probe.post("/probe/limits/token", data=form)
        assert response.status_code == 400
        # The account limit (3) is tighter than the IP limit (5).
        assert response.headers["ratelimit-limit"] == "3"
        assert response.headers["ratelimit-remaining"] == str(remaining)
    right = {"username": "ann@example.com", "password": "right"}
    assert_rate_limited(await probe.post("/probe/limits/token", data=right))


async def test_refused_attempts_count_against_the_ip(probe: httpx.AsyncClient) -> None:
    for _ in range(4):  # three counted by the account, the fourth refused by it
        await probe.post("/probe/limits/token", data={"username": "a@x.io", "password": "no"})
    # The IP (5/minute) saw all four: one left, for any account.
    response = await probe.post(
        "/probe/limits/token", data={"username": "b@x.io", "password": "right"}
    )
    assert response.status_code == 200
    assert (response.headers["ratelimit-limit"], response.headers["ratelimit-remaining"]) == (
        "5",
        "0",
    )
    assert_rate_limited(
        await probe.post("/probe/limits/token", data={"username": "c@x.io", "password": "right"})
    )


async def test_each_client_behind_a_trusted_proxy_has_its_own_budget(
    probe: httpx.AsyncClient,
) -> None:
    first = {"X-Forwarded-For": "203.0.113.7"}
    for _ in range(3):
        await probe.get("/probe/limits/register", headers=first)
    assert_rate_limited(await probe.get("/probe/limits/register", headers=first))
    other = await probe.get("/probe/limits/register", headers={"X-Forwarded-For": "203.0.113.8"})
    assert other.status_code == 200
    assert other.headers["ratelimit-remaining"] == "2"


async def test_untrusted_client_cannot_spoof_a_fresh_budget(
    app: FastAPI, probe: httpx.AsyncClient
) -> None:
    transport = httpx.ASGITransport(app=app, client=("192.0.2.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as direct:
        for _ in range(3):
            await direct.get("/probe/limits/register")
        for spoofed in ("203.0.113.9", "203.0.113.10, 127.0.0.1"):
            response = await direct.get(
                "/probe/limits/register", headers={"X-Forwarded-For": spoofed}
            )
            assert_rate_limited(response)


async def test_redis_down_answers_503_not_500(
    app: FastAPI, probe: httpx.AsyncClient, make_settings: SettingsFactory
) -> None:
    broken = RateLimiter.from_settings(make_settings(redis={"url": UNREACHABLE_REDIS}))
    app.dependency_overrides[get_rate_limiter] = lambda: broken
    try:
        response = await probe.post(
            "/probe/limits/token", data={"username": "a@x.io", "password": "right"}
        )
    finally:
        await broken.close()
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert response.headers["retry-after"].isdigit()
    assert "127.0.0.1" not in response.text
    for name in RATE_HEADERS:
        assert name not in response.headers


async def test_the_app_limiter_is_the_default(app: FastAPI, client: httpx.AsyncClient) -> None:
    # No override: the limiter the lifespan opened (Resources.limiter) counts.
    app.include_router(router)
    for remaining in ("2", "1"):
        response = await client.get("/probe/limits/register")
        assert response.status_code == 200
        assert response.headers["ratelimit-remaining"] == remaining
