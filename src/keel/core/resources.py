"""Everything a running app holds open, opened and closed by its lifespan.

Nothing here is created at import time: `open_resources` builds it all from settings
and closes it all, in reverse order, however start-up or shutdown goes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection

from keel.auth.revocation import InProcessRevocations, RedisRevocations, SessionRevocations
from keel.config import Settings
from keel.core.broker import Broker, InProcessBroker, RedisBroker
from keel.core.client_ip import ClientIpResolver
from keel.core.db import create_engine, create_sessionmaker
from keel.core.jobs import Job, JobContext, JobOutcomes, JobQueue, Periodic
from keel.core.jobs.inprocess import InProcessRunner
from keel.core.jobs.redis_queue import DramatiqQueue, create_broker
from keel.core.mail import create_backend
from keel.core.metrics import Metrics
from keel.core.pagination import CursorCodec
from keel.core.ratelimit import RateLimiter
from keel.core.security.access_tokens import LEEWAY_SECONDS, AccessTokens
from keel.core.security.keys import KeyRing
from keel.core.security.passwords import PasswordHasher
from keel.core.security.secret import load_secret

log = structlog.get_logger("keel.resources")


@dataclass(slots=True)
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: Redis | None
    broker: Broker
    metrics: Metrics
    passwords: PasswordHasher
    keys: KeyRing
    access_tokens: AccessTokens
    revocations: SessionRevocations
    limiter: RateLimiter
    cursors: CursorCodec
    client_ip: ClientIpResolver
    jobs: JobQueue


def resources_of(connection: HTTPConnection) -> Resources:
    """The running app's resources, as its lifespan opened them."""
    resources: Resources = connection.app.state.resources
    return resources


def create_redis(url: str) -> Redis:
    return Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
        retry_on_timeout=True,
    )


@contextlib.asynccontextmanager
async def open_resources(
    settings: Settings,
    metrics: Metrics,
    jobs: Sequence[Job[Any]] = (),
    periodic: Sequence[Periodic] = (),
) -> AsyncIterator[Resources]:
    async with contextlib.AsyncExitStack() as stack:
        engine = create_engine(settings)
        stack.push_async_callback(engine.dispose)
        metrics.watch_pool(engine)

        redis: Redis | None = None
        broker: Broker
        if settings.redis.url:
            redis = create_redis(settings.redis.url)
            stack.push_async_callback(redis.aclose)
            broker = RedisBroker(redis, settings.redis.key_prefix)
        else:
            broker = InProcessBroker()
        await broker.start()
        stack.push_async_callback(broker.close)

        sessionmaker = create_sessionmaker(engine)
        # A revocation must outlive every token issued before it, verification's clock
        # leeway included, or an ended session's token would work again for a moment.
        access_ttl = settings.auth.access_token_ttl_seconds + LEEWAY_SECONDS + 5
        revocations: SessionRevocations = (
            RedisRevocations(redis, settings.redis.key_prefix, sessionmaker, access_ttl)
            if redis is not None
            else InProcessRevocations(sessionmaker, access_ttl)
        )
        limiter = RateLimiter.from_settings(settings)
        stack.push_async_callback(limiter.close)
        keys = KeyRing.load(settings)
        job_queue = _open_jobs(settings, sessionmaker, metrics, jobs, periodic)
        # Pushed after the engine, so closed before it: running jobs may still need it.
        stack.push_async_callback(job_queue.close)

        log.info(
            "resources_opened",
            database=engine.url.render_as_string(hide_password=True),
            redis="on" if redis else "off",
            mail=settings.mail.backend,
            jobs="dramatiq" if settings.jobs_on_dramatiq else "in-process",
        )
        yield Resources(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            redis=redis,
            broker=broker,
            metrics=metrics,
            passwords=PasswordHasher(settings.auth),
            keys=keys,
            access_tokens=AccessTokens(keys, settings),
            revocations=revocations,
            limiter=limiter,
            cursors=CursorCodec(load_secret(settings)),
            client_ip=ClientIpResolver(settings.server.trusted_proxies),
            jobs=job_queue,
        )
    log.info("resources_closed")


def _open_jobs(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    metrics: Metrics,
    jobs: Sequence[Job[Any]],
    periodic: Sequence[Periodic],
) -> JobQueue:
    outcomes = JobOutcomes(metrics)
    if settings.jobs_on_dramatiq:
        # This process only enqueues; `keel worker` runs them.
        return DramatiqQueue(create_broker(settings), jobs, outcomes)
    runner = InProcessRunner(
        JobContext(settings, sessionmaker, create_backend(settings)),
        outcomes,
        concurrency=settings.jobs.concurrency,
        shutdown_timeout=settings.server.graceful_timeout,
    )
    runner.start_schedule(periodic, settings)
    return runner
