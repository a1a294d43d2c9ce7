"""Prometheus metrics, correct with one process or many.

With several worker processes, `keel serve` points `PROMETHEUS_MULTIPROC_DIR` at a
fresh folder before any worker starts; each process then writes its samples there and
`/metrics` adds them up across processes. With one process the metrics live in a
registry of their own, so several apps in one process (tests) never collide.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
        self.ws_frames = Counter(
            "keel_ws_frames_total",
            "WebSocket frames received from clients (in) and sent to them (out).",
            ["direction"],
            registry=registry,
        )
        self.ws_closes = Counter(
            "keel_ws_closes_total",
            "WebSocket connections closed by the server, by reason.",
            ["reason"],
            registry=registry,
        )
        self.ws_replayed = Counter(
            "keel_ws_replayed_frames_total",
            "Frames sent again to clients that resumed with `since`.",
            registry=registry,
        )
        self.ws_gaps = Counter(
            "keel_ws_gaps_total",
            "Resumes whose `since` was older than what is kept (answered with `gap`).",
            registry=registry,
        )
        self.file_bytes_uploaded = Counter(
            "keel_file_bytes_uploaded_total",
            "Bytes of files stored by uploads that succeeded.",
            registry=registry,
        )
        self.file_bytes_downloaded = Counter(
            "keel_file_bytes_downloaded_total",
            "Bytes of files sent to clients (downloads and ranges; not presigned S3 links).",
            registry=registry,
        )
        self.file_uploads_refused = Counter(
            "keel_file_uploads_refused_total",
            "Uploads refused or abandoned, by reason.",
            ["reason"],
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

    def watch_pool(self, engine: AsyncEngine, requests: Any = None) -> Callable[[], None]:
        """Track this process's database connections as idle or in use: SQLAlchemy's
        pool, counted from its events, plus the request pool (an asyncpg pool), read
        whenever the returned function is called (on each take and give-back)."""
        idle = self.db_pool.labels("idle")
        in_use = self.db_pool.labels("in_use")
        engine_pool = {"idle": 0, "in_use": 0}

        def refresh() -> None:
            free, busy = engine_pool["idle"], engine_pool["in_use"]
            if requests is not None:
                size, waiting = requests.get_size(), requests.get_idle_size()
                free, busy = free + waiting, busy + size - waiting
            idle.set(free)
            in_use.set(busy)

        def counting(**deltas: int) -> Callable[..., None]:
            def on_event(*_args: object) -> None:
                for state, delta in deltas.items():
                    engine_pool[state] += delta
                refresh()

            return on_event

        pool = engine.sync_engine.pool
        event.listen(pool, "connect", counting(idle=1))
        event.listen(pool, "checkout", counting(idle=-1, in_use=1))
        event.listen(pool, "checkin", counting(in_use=-1, idle=1))
        event.listen(pool, "close", counting(idle=-1))
        return refresh

    def export_registry(self) -> CollectorRegistry:
        """This process's registry, or one that adds up every process's sample files."""
        if self.registry is not None:
            return self.registry
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry

    def render(self) -> bytes:
        return generate_latest(self.export_registry())
