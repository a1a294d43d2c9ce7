"""What a running job is given: settings, a database session factory, the mail backend,
the file storage.

In `keel serve` the context shares the app's engine; in `keel worker` it is opened once
per worker process, on the event loop the jobs run on.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from keel.config import Settings
from keel.core.db import Database, create_engine, create_sessionmaker
from keel.core.mail import MailBackend, create_backend
from keel.core.metrics import Metrics
from keel.core.storage import Storage, create_storage


@dataclass(frozen=True, slots=True)
class JobContext:
    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    mail: MailBackend
    # None only where no job touches files (unit tests of the runners).
    storage: Storage = None  # type: ignore[assignment]

    @property
    def database(self) -> Database:
        """Units of work for jobs, through SQLAlchemy's engine: jobs are off the request
        path, so they share its engine rather than the request pool."""
        return Database(self.sessionmaker.kw["bind"], None, self.settings.database.pool_timeout)


@contextlib.asynccontextmanager
async def open_job_context(settings: Settings, metrics: Metrics) -> AsyncIterator[JobContext]:
    engine = create_engine(settings)
    metrics.watch_pool(engine)
    storage = create_storage(settings)
    try:
        await storage.start()
        yield JobContext(settings, create_sessionmaker(engine), create_backend(settings), storage)
    finally:
        await storage.close()
        await engine.dispose()
