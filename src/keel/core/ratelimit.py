"""Rate limits (API.md, "Errors"): counted before any credential is looked at.

A check is a limit in the `limits` library's notation ("10/minute", or several joined
by ";") and a key ("token:ip:203.0.113.7"). A request hits every check that applies, so
it counts against all of them even when one of them refuses it, and the answer carries
`RateLimit-Limit/Remaining/Reset` for the check with the fewest requests left.

The strategy is the moving window: it never admits more than the limit within any
window (a fixed window lets 2x through across a boundary, which matters for the
password grant, where this limit is the compensating control), and its Reset is exact:
the moment the oldest counted request leaves the window, which is when Remaining next
grows and, once refused, when the next request will be let in. Counters live in Redis
when it is configured (shared by every worker), otherwise in this process.

When Redis is unreachable the limiter fails closed with 503, not open: otherwise an
outage would lift the only brake on password guessing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, cast

import structlog
from fastapi import Depends, Request, Response
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.storage.redis.redispy import RedispyBridge
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from starlette.datastructures import MutableHeaders

from keel.config import LimitSettings, Settings
from keel.core.client_ip import request_client_ip
from keel.core.errors import RateLimited, ServiceUnavailable
from keel.core.openapi import answers

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("keel.ratelimit")

# (limit in the `limits` notation, key)
Check = tuple[str, str]
# Builds one check from the request and the client's IP.
RuleBuilder = Callable[[Request, str], Check]

# Where a decision's headers wait for the response (request.state is scope["state"]).
_STATE_KEY = "rate_limit_headers"
# A template: redis-py copies the Retry it is given.
_RETRY_ON_DROPPED_CONNECTION = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


@functools.lru_cache(maxsize=64)
def parse_limits(limit: str) -> tuple[RateLimitItem, ...]:
    """Parsed once per distinct string; raises ValueError when it is not valid notation."""
    return tuple(parse_many(limit))


@dataclass(frozen=True, slots=True)
class RateLimitDecision:
    allowed: bool
    limit: int
    remaining: int
    reset: int  # seconds from now
    retry_after: int | None = None  # set when refused

    @property
    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
        }
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return headers

    def raise_if_refused(self) -> None:
        if not self.allowed:
            raise RateLimited(headers=self.headers)

    def remember(self, request: Request) -> None:
        """Keep the headers for whatever response this request ends with, errors included
        (RateLimitHeadersMiddleware adds them)."""
        setattr(request.state, _STATE_KEY, self.headers)


@dataclass(frozen=True, slots=True)
class _Outcome:
    allowed: bool
    limit: int
    remaining: int
    reset: int


class RateLimiter:
    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._strategy = MovingWindowRateLimiter(storage)

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        _validate(settings.limit)
        if not settings.redis.url:
            return cls(MemoryStorage())
        storage = RedisStorage(
            _storage_uri(settings.redis.url),
            # The default client is coredis; redis-py is the one Keel already uses.
            implementation="redispy",
            # limits adds ":" after the prefix: "keel:ratelimit:LIMITS/token:ip:…".
            key_prefix=f"{settings.redis.key_prefix}ratelimit",
            # One exception type to catch, whatever went wrong in Redis.
            wrap_exceptions=True,
            socket_connect_timeout=settings.redis.connect_timeout,
            socket_timeout=settings.redis.socket_timeout,
            # redis-py's default retries 3 times, with backoff: a hung Redis would hold
            # the request five timeouts long. One retry, on a dropped connection only
            # (a restarted Redis), as for the shared client.
            retry=_RETRY_ON_DROPPED_CONNECTION,  # type: ignore[arg-type]  # typed too narrowly
        )
        return cls(storage)

    async def hit(self, *checks: Check) -> RateLimitDecision:
        if not checks:
            raise ValueError("hit() needs at least one check")
        try:
            outcomes = [
                await self._hit_one(item, key)
                for limit, key in checks
                for item in parse_limits(limit)
            ]
        except StorageError as exc:
            # One line per refused request, not a traceback each: the cause is plain.
            log.error(  # noqa: TRY400
                "rate_limit_storage_unavailable",
                error_type=type(exc.storage_error).__name__,
                error=str(exc.storage_error),
            )
            raise ServiceUnavailable("Rate limiting is temporarily unavailable") from exc
        # Fewest left first; among equals the one that frees up last, so that Reset and
        # Retry-After agree: a retry needs a free slot in every check.
        tightest = min(outcomes, key=lambda outcome: (outcome.remaining, -outcome.reset))
        allowed = all(outcome.allowed for outcome in outcomes)
        return RateLimitDecision(
            allowed=allowed,
            limit=tightest.limit,
            remaining=tightest.remaining,
            reset=tightest.reset,
            retry_after=None if allowed else max(1, tightest.reset),
        )

    async def enforce(
        self, request: Request, *checks: Check, response: Response | None = None
    ) -> RateLimitDecision:
        """Hit, keep the headers for the response, and raise RateLimited when refused."""
        decision = await self.hit(*checks)
        decision.remember(request)
        if response is not None:
            response.headers.update(decision.headers)
        decision.raise_if_refused()
        return decision

    async def _hit_one(self, item: RateLimitItem, key: str) -> _Outcome:
        allowed = await self._strategy.hit(item, key)
        stats = await self._strategy.get_window_stats(item, key)
        return _Outcome(
            allowed=allowed,
            limit=item.amount,
            remaining=max(0, stats.remaining),
            reset=max(0, math.ceil(stats.reset_time - time.time())),
        )

    async def close(self) -> None:
        if isinstance(self._storage, RedisStorage):
            bridge = self._storage.bridge
            if isinstance(bridge, RedispyBridge):
                client = bridge.get_connection()
                if isinstance(client, Redis):
                    await client.aclose()
        elif isinstance(self._storage, MemoryStorage) and self._storage.timer is not None:
            # Its expiry sweep is a task; stop it before the event loop goes away.
            timer = self._storage.timer
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer


def _validate(limits: LimitSettings) -> None:
    # A typo in a limit must stop the start, not surface as a 500 on the login page.
    for name, value in limits:
        try:
            parse_limits(value)
        except ValueError as exc:
            raise ValueError(f"KEEL_LIMIT_{name.upper()}={value!r} is not a valid limit") from exc


def _storage_uri(redis_url: str) -> str:
    # limits picks its storage by scheme: redis://… → async+redis://…
    scheme, separator, rest = redis_url.partition("://")
    if scheme == "unix":
        scheme = "redis+unix"
    return f"async+{scheme}{separator}{rest}"


def ip_key(ip: str) -> str:
    """The budget an address counts against: IPv6 by its /64, which one subscriber
    usually holds whole and could otherwise rotate through for fresh budgets."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def per_ip(name: str, limit: Callable[[LimitSettings], str]) -> RuleBuilder:
    """A rule: the limit `limit(settings.limit)`, counted per client IP under `name`."""

    def build(request: Request, ip: str) -> Check:
        settings: Settings = request.app.state.settings
        return limit(settings.limit), f"{name}:ip:{ip_key(ip)}"

    return build


async def get_rate_limiter(request: Request) -> RateLimiter:
    """The app's limiter; a dependency, so tests can override it."""
    return cast("RateLimiter", request.app.state.limiter)


RateLimiterDep = Annotated[RateLimiter, Depends(get_rate_limiter)]


def rate_limited(*rules: RuleBuilder) -> Callable[..., Awaitable[RateLimitDecision]]:
    """A dependency that enforces these rules before the endpoint (and before any
    credential check it makes): `dependencies=[Depends(rate_limited(per_ip(...)))]`."""

    @answers(429, 503, rate_limit=True)  # 503: the limiter fails closed when Redis is down
    async def dependency(
        request: Request, response: Response, limiter: RateLimiterDep
    ) -> RateLimitDecision:
        # No peer address (a Unix socket without trusted proxies): one shared budget.
        ip = request_client_ip(request) or "unknown"
        checks = [rule(request, ip) for rule in rules]
        return await limiter.enforce(request, *checks, response=response)

    return dependency


class RateLimitHeadersMiddleware:
    """Adds the remembered RateLimit-* headers to the response, whatever produced it:
    an error handler's 4xx, or a Response the endpoint built itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Made here so inner layers share this dict even if they copy the scope.
        state: dict[str, object] = scope.setdefault("state", {})

        async def send_with_headers(message: Message) -> None:
            remembered = state.get(_STATE_KEY)
            if message["type"] == "http.response.start" and isinstance(remembered, dict):
                headers = MutableHeaders(scope=message)
                for name, value in remembered.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
