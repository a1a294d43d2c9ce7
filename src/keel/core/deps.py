"""Typed dependencies for what routes use of the running app: `Broker`, `Jobs`,
`Limiter`, `Passwords`, `Cursors`, `Storage`, `Links`, `AppMetrics`, `AppSettings`,
`Transfers` (the
database's is `DbSession`, in core/db.py).

The composition root (keel/resources.py) opens each resource once and names it on the
app's state; these aliases are the only readers of that state, so a route declares
what it needs, a service receives exactly that, and nothing looks anything up by hand.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection

from keel.config import Settings
from keel.core.broker import Broker as BrokerBackend
from keel.core.jobs.queue import JobQueue
from keel.core.metrics import Metrics
from keel.core.openapi import answers
from keel.core.pagination import CursorCodec
from keel.core.ratelimit import RateLimiter, get_rate_limiter
from keel.core.security.passwords import PasswordHasher
from keel.core.security.signed_links import LinkSigner
from keel.core.storage import Storage as StorageBackend
from keel.core.transfers import TransferSlots


def app_state(name: str) -> Callable[[HTTPConnection], Awaitable[Any]]:
    """A dependency returning the app's resource `name` (async: a plain function would
    be run in a thread on every request)."""

    async def provide(connection: HTTPConnection) -> Any:
        return getattr(connection.app.state, name)

    provide.__name__ = f"provide_{name}"
    return provide


AppSettings = Annotated[Settings, Depends(app_state("settings"))]
Broker = Annotated[BrokerBackend, Depends(app_state("broker"))]
Jobs = Annotated[JobQueue, Depends(app_state("jobs"))]
Limiter = Annotated[RateLimiter, Depends(get_rate_limiter)]
Passwords = Annotated[PasswordHasher, Depends(app_state("passwords"))]
Cursors = Annotated[CursorCodec, Depends(app_state("cursors"))]
Storage = Annotated[StorageBackend, Depends(app_state("storage"))]
Links = Annotated[LinkSigner, Depends(app_state("links"))]
AppMetrics = Annotated[Metrics, Depends(app_state("metrics"))]
# A route taking transfer slots may be refused one: 429 for the caller, 503 for the process.
Transfers = Annotated[TransferSlots, Depends(answers(429, 503)(app_state("transfers")))]
