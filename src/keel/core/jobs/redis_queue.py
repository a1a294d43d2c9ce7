"""Jobs on Dramatiq with its Redis broker: the API enqueues, `keel worker` runs them.

Dramatiq brings what a durable queue needs: acknowledgement after the job (a worker
killed mid-job gives the message back), retries with exponential backoff, a time limit
per try, and a dead-letter queue (`<prefix>dramatiq:<queue>.XQ`, kept for a week) for
messages that failed for good. Keel adds one actor per job, the job context, and the
outcome log lines and metrics shared with the in-process runner.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis
import structlog
from dramatiq import Actor, Broker, Middleware
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from keel.config import Settings
from keel.core.jobs.context import JobContext
from keel.core.jobs.definition import Job, JobCall
from keel.core.jobs.outcomes import JobOutcomes

log = structlog.get_logger("keel.jobs")

ContextSource = Callable[[], Awaitable[JobContext]]


def create_broker(settings: Settings) -> RedisBroker:
    url = settings.redis.url
    if not url:
        raise ValueError("Dramatiq needs KEEL_REDIS_URL.")
    # Short timeouts (settings): an API request that enqueues waits on a hung Redis
    # this long at most, on a thread of the event loop's small default pool.
    client = redis.Redis.from_url(
        url,
        socket_connect_timeout=settings.redis.connect_timeout,
        socket_timeout=settings.redis.socket_timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        # (redis-py's default retries 3 times, with backoff; here once, on a dropped
        # connection only, never on a timeout)
    )
    # Dramatiq's default middleware: age limit, time limit, shutdown notices, callbacks,
    # pipelines, retries. Its Prometheus middleware is left out: Keel counts outcomes.
    return RedisBroker(  # type: ignore[no-untyped-call]
        client=client, namespace=f"{settings.redis.key_prefix}dramatiq"
    )


def dead_letter_key(settings: Settings, queue: str = "default") -> str:
    """The Redis sorted set of message ids that failed for good (bodies in `<key>.msgs`)."""
    return f"{settings.redis.key_prefix}dramatiq:{queue}.XQ"


async def _no_context() -> JobContext:
    raise RuntimeError("Jobs run in `keel worker`, not in the process that enqueues them.")


class DramatiqQueue:
    """Enqueues jobs as Dramatiq messages; in a worker, its actors run them."""

    def __init__(
        self,
        broker: RedisBroker,
        jobs: Sequence[Job[Any]],
        outcomes: JobOutcomes,
        context: ContextSource = _no_context,
    ) -> None:
        self.broker = broker
        self.outcomes = outcomes
        self.actors = {job.name: self._actor(job, context) for job in jobs}

    def _actor(self, job: Job[Any], context: ContextSource) -> Actor[Any, Any]:
        policy = job.retry

        async def run(*args: Any, **kwargs: Any) -> None:
            # Cancelled on the event loop at the limit; Dramatiq's TimeLimit, which
            # interrupts the worker thread, stays as the backstop.
            async with asyncio.timeout(policy.time_limit_ms / 1000):
                await job.fn(await context(), *args, **kwargs)

        return Actor(
            run,
            broker=self.broker,
            actor_name=job.name,
            queue_name=job.queue,
            priority=0,
            options={
                "max_retries": policy.max_retries,
                "min_backoff": policy.min_backoff_ms,
                "max_backoff": policy.max_backoff_ms,
                "time_limit": policy.time_limit_ms,
            },
        )

    async def enqueue(self, call: JobCall) -> None:
        actor = self.actors[call.name]
        try:
            # redis-py's blocking client: off the event loop, so a slow Redis stalls
            # this request only.
            await asyncio.to_thread(actor.send_with_options, args=call.args, kwargs=call.kwargs)
        except Exception as error:  # noqa: BLE001 - whatever the queue raised, say so
            self.outcomes.not_enqueued(call.name, error, call.kwargs)

    async def close(self) -> None:
        await asyncio.to_thread(self.broker.close)


class OutcomeMiddleware(Middleware):
    """Log and count how each message ended. Placed before Retries in the middleware
    list, so its after-hook runs after Retries has decided whether to try again."""

    def __init__(self, outcomes: JobOutcomes) -> None:
        self.outcomes = outcomes
        self._started: dict[str, float] = {}

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        self._started[message.message_id] = time.perf_counter()

    def after_process_message(
        self,
        broker: Any,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        started = self._started.pop(message.message_id, time.perf_counter())
        # Retries counts failures in the message; attempt = failures so far + 1.
        retries = int(message.options.get("retries", 0))
        if exception is None:
            self.outcomes.succeeded(message.actor_name, retries + 1, time.perf_counter() - started)
        elif message.failed:
            self.outcomes.failed(
                message.actor_name, retries, exception, message.args, message.kwargs
            )
        else:
            self.outcomes.retried(message.actor_name, retries, exception, None)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        self._started.pop(message.message_id, None)
        self.outcomes.failed(
            message.actor_name,
            int(message.options.get("retries", 0)),
            RuntimeError("skipped (too old or cancelled)"),
            message.args,
            message.kwargs,
        )
