"""The one interface the rest of Keel enqueues through."""

from __future__ import annotations

from typing import Protocol

from keel.core.db import Unit
from keel.core.jobs.definition import JobCall


class JobQueue(Protocol):
    async def enqueue(self, call: JobCall) -> None:
        """Hand the job to its runner. Never raises: a job the queue could not take is
        logged and counted as `not_enqueued`, since the change that asked for it has
        already been committed."""
        ...

    async def close(self) -> None: ...


def enqueue_after_commit(unit: Unit, queue: JobQueue, call: JobCall) -> None:
    """Enqueue `call` once this unit's transaction commits; on rollback, never."""

    async def send() -> None:
        await queue.enqueue(call)

    unit.after_commit(send)
