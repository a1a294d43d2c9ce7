"""The one interface the rest of Keel enqueues through."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from keel.core.db import after_commit
from keel.core.jobs.definition import JobCall


class JobQueue(Protocol):
    async def enqueue(self, call: JobCall) -> None:
        """Hand the job to its runner. Never raises: a job the queue could not take is
        logged and counted as `not_enqueued`, since the change that asked for it has
        already been committed."""
        ...

    async def close(self) -> None: ...


def enqueue_after_commit(session: AsyncSession, queue: JobQueue, call: JobCall) -> None:
    """Enqueue `call` once this session's transaction commits; on rollback, never."""

    async def send() -> None:
        await queue.enqueue(call)

    after_commit(session, send)
