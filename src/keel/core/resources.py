"""Everything a running app holds open, opened and closed by its lifespan.

Nothing here is created at import time: `open_resources` builds it all from settings
and closes it all, in reverse order, however start-up or shutdown goes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from keel.config import Settings
from keel.core.broker import Broker, InProcessBroker, RedisBroker
from keel.core.db import create_engine, create_sessionmaker
from keel.core.metrics import Metrics

log = structlog.get_logger("keel.resources")


@dataclass(slots=True)
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: Redis | None
    broker: Broker
    metrics: Metrics


def create_redis(url: str) -> Redis:
    return Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
        retry_on_timeout=True,
    )


@contextlib.asynccontextmanager
async def open_resources(settings: Settings, metrics: Metrics) -> AsyncIterator[Resources]:
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

        log.info(
            "resources_opened",
            database=engine.url.render_as_string(hide_password=True),
            redis="on" if redis else "off",
        )
        yield Resources(
            settings=settings,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            redis=redis,
            broker=broker,
            metrics=metrics,
        )
    log.info("resources_closed")
