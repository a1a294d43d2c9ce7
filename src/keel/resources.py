"""The composition root: everything a running app holds open, opened and closed by its
lifespan, and the only module that knows every backend.

Nothing here is created at import time: `open_resources` builds it all from settings
and closes it all, in reverse order, however start-up or shutdown goes. `install`
names each resource on the app's state, where the typed dependencies of core/deps.py
(and auth/deps.py) read them: routes declare what they use, nothing looks it up.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from fastapi import FastAPI
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from keel.auth.deps import Authenticator
from keel.auth.revocation import InProcessRevocations, RedisRevocations, SessionRevocations
from keel.auth.sessions import Issuer
from keel.config import RedisSettings, Settings
from keel.core.broker import Broker, History, InProcessBroker, RedisBroker
from keel.core.client_ip import ClientIpResolver
from keel.core.db import Database, create_engine, create_sessionmaker
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
from keel.core.security.signed_links import LinkSigner
from keel.core.storage import Storage, create_storage
from keel.core.transfers import TransferSlots
from keel.realtime.hub import RealtimeHub

log = structlog.get_logger("keel.resources")


@dataclass(slots=True)
class Resources:
    settings: Settings
    engine: AsyncEngine
    # The request path's units of work (core/db.py); the sessionmaker is for jobs and
    # tests that want SQLAlchemy's ORM session on the same engine.
    database: Database
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
    issuer: Issuer
    authenticator: Authenticator
    storage: Storage
    links: LinkSigner
    realtime: RealtimeHub
    transfers: TransferSlots

    def install(self, app: FastAPI) -> None:
        """Name each resource on the app's state for the typed dependencies."""
        app.state.resources = self
        for name in (
            "settings",
            "database",
            "redis",
            "broker",
            "metrics",
            "passwords",
            "keys",
            "revocations",
            "limiter",
            "cursors",
            "client_ip",
            "jobs",
            "issuer",
            "authenticator",
            "storage",
            "links",
            "realtime",
            "transfers",
        ):
            setattr(app.state, name, getattr(self, name))


# Connections one process keeps to Redis at most; past that a command waits for one
# (redis-py's default pool fails at once instead, which a burst of realtime subscribes
# hit in the benchmark), as long as it would wait for a reply.
REDIS_MAX_CONNECTIONS = 100


def create_redis(settings: RedisSettings) -> Redis:
    """The shared client. A Redis that is down or hung fails each command within the
    timeouts, never retried: callers degrade at once (docs/failure-modes.md) rather than
    hold their request, and anything it holds, while Redis does not answer."""
    assert settings.url is not None  # noqa: S101 - called only when Redis is configured
    pool = BlockingConnectionPool.from_url(
        settings.url,
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=settings.socket_timeout,
        socket_connect_timeout=settings.connect_timeout,
        socket_timeout=settings.socket_timeout,
        health_check_interval=30,
        # redis-py retries a failed command 3 times with backoff by default, which
        # turns a hung Redis's 2 s into 10 s. One retry, on a dropped connection only:
        # after a Redis restart each pooled connection fails once, which the retry on a
        # fresh one hides; a timeout (a hung Redis) is never retried.
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return Redis.from_pool(pool)


@contextlib.asynccontextmanager
async def open_resources(
    settings: Settings,
    metrics: Metrics,
    jobs: Sequence[Job[Any]] = (),
    periodic: Sequence[Periodic] = (),
) -> AsyncIterator[Resources]:
    async with contextlib.AsyncExitStack() as stack:
        engine = create_engine(settings, bound_statements=True)
        stack.push_async_callback(engine.dispose)
        database = await Database.open(settings, engine)
        stack.push_async_callback(database.close)
        database.on_pool_change = metrics.watch_pool(engine, database.pool)

        redis: Redis | None = None
        broker: Broker
        history = History(settings.realtime.history_seconds, settings.realtime.history_frames)
        if settings.redis.url:
            redis = create_redis(settings.redis)
            stack.push_async_callback(redis.aclose)
            broker = RedisBroker(redis, settings.redis.key_prefix, history)
        else:
            broker = InProcessBroker(history)
        await broker.start()
        stack.push_async_callback(broker.close)

        sessionmaker = create_sessionmaker(engine)
        # A revocation must outlive every token issued before it, verification's clock
        # leeway included, or an ended session's token would work again for a moment.
        access_ttl = settings.auth.access_token_ttl_seconds + LEEWAY_SECONDS + 5
        revocations: SessionRevocations = (
            RedisRevocations(redis, settings.redis.key_prefix, database, access_ttl)
            if redis is not None
            else InProcessRevocations(database, access_ttl)
        )
        storage = create_storage(settings)
        await storage.start()
        stack.push_async_callback(storage.close)
        limiter = RateLimiter.from_settings(settings)
        stack.push_async_callback(limiter.close)
        keys = KeyRing.load(settings)
        job_queue = _open_jobs(settings, sessionmaker, storage, metrics, jobs, periodic)
        # Pushed after the engine, so closed before it: running jobs may still need it.
        stack.push_async_callback(job_queue.close)

        log.info(
            "resources_opened",
            database=engine.url.render_as_string(hide_password=True),
            redis="on" if redis else "off",
            mail=settings.mail.backend,
            storage=storage.name,
            jobs="dramatiq" if settings.jobs_on_dramatiq else "in-process",
        )
        access_tokens = AccessTokens(keys, settings)
        secret = load_secret(settings)
        authenticator = Authenticator(access_tokens, revocations, settings.auth.api_key_prefix)
        realtime = RealtimeHub(settings, broker, authenticator, revocations, database, metrics)
        await realtime.start()
        # Pushed after the broker: connections are closed (1001) before it goes.
        stack.push_async_callback(realtime.close)
        passwords = PasswordHasher(settings.auth)
        stack.callback(passwords.close)
        yield Resources(
            settings=settings,
            engine=engine,
            database=database,
            sessionmaker=sessionmaker,
            redis=redis,
            broker=broker,
            metrics=metrics,
            passwords=passwords,
            keys=keys,
            access_tokens=access_tokens,
            revocations=revocations,
            limiter=limiter,
            cursors=CursorCodec(secret),
            links=LinkSigner(secret),
            storage=storage,
            client_ip=ClientIpResolver(settings.server.trusted_proxies),
            jobs=job_queue,
            issuer=Issuer(
                access_tokens,
                timedelta(days=settings.auth.refresh_token_ttl_days),
                revocations,
            ),
            authenticator=authenticator,
            realtime=realtime,
            transfers=TransferSlots(
                settings.http.transfers_per_process, settings.http.transfers_per_user
            ),
        )
    log.info("resources_closed")


def _open_jobs(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    storage: Storage,
    metrics: Metrics,
    jobs: Sequence[Job[Any]],
    periodic: Sequence[Periodic],
) -> JobQueue:
    outcomes = JobOutcomes(metrics)
    if settings.jobs_on_dramatiq:
        # This process only enqueues; `keel worker` runs them.
        return DramatiqQueue(create_broker(settings), jobs, outcomes)
    runner = InProcessRunner(
        JobContext(settings, sessionmaker, create_backend(settings), storage),
        outcomes,
        concurrency=settings.jobs.concurrency,
        shutdown_timeout=settings.server.graceful_timeout,
    )
    runner.start_schedule(periodic, settings)
    return runner
