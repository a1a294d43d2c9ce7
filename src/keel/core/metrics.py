"""Prometheus metrics, correct with one process or many.

With several worker processes, `keel serve` points `PROMETHEUS_MULTIPROC_DIR` at a
fresh folder before any worker starts; each process then writes its samples there and
`/metrics` adds them up across processes. With one process the metrics live in a
registry of their own, so several apps in one process (tests) never collide.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy import event

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = multiprocess_mode()
        # In multiprocess mode samples go to files, and collection builds its own registry.
        self.registry: CollectorRegistry | None = None if self.multiprocess else CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "keel_http_requests_total",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "keel_http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route template and status.",
            ["method", "route", "status"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "keel_http_requests_in_flight",
            "HTTP requests being answered now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.db_pool = Gauge(
            "keel_db_pool_connections",
            "Database pool connections, by state.",
            ["state"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.ws_connections = Gauge(
            "keel_ws_connections",
            "Open WebSocket connections.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        # Labelled children by (method, route, status): looking them up through
        # .labels() on every request costs a lock and a tuple of strings.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.jobs = Counter(
            "keel_jobs_total",
            "Background jobs finished, by job and outcome.",
            ["job", "outcome"],
            registry=registry,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in KNOWN_METHODS:
            method = "OTHER"  # a client's made-up method must not mint a new series
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            labels = (method, route, str(status))
            children = (self.requests.labels(*labels), self.duration.labels(*labels))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def watch_pool(self, engine: AsyncEngine) -> None:
        """Track this process's pool connections as idle or in use, from pool events."""
        idle = self.db_pool.labels("idle")
        in_use = self.db_pool.labels("in_use")
        pool = engine.sync_engine.pool

        def on_connect(*_args: object) -> None:
            idle.inc()

        def on_checkout(*_args: object) -> None:
            idle.dec()
            in_use.inc()

        def on_checkin(*_args: object) -> None:
            in_use.dec()
            idle.inc()

        def on_close(*_args: object) -> None:
            idle.dec()

        event.listen(pool, "connect", on_connect)
        event.listen(pool, "checkout", on_checkout)
        event.listen(pool, "checkin", on_checkin)
        event.listen(pool, "close", on_close)

    def export_registry(self) -> CollectorRegistry:
        """This process's registry, or one that adds up every process's sample files."""
        if self.registry is not None:
            return self.registry
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry

    def render(self) -> bytes:
        return generate_latest(self.export_registry())
