"""What the soak counts: every request by kind, phase and status, the latencies of the
measured window, and every failure, by category, with the first few in full.

A failure is anything the soak must not see: a 5xx, a transport error, a status the
request could not legitimately get, an answer that disagrees with what was written,
a realtime frame missing, twice or out of order, a write not read back at the end.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import httpx

# Phases: `setup` (accounts), `warmup` (excluded from the figures), `measure`, `verify`.
MEASURE = "measure"
DETAILS_KEPT = 20  # per failure category; the rest are only counted


def nearest_rank(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, round(share * len(ordered) + 0.4999999))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Failures:
    counts: Counter[str] = field(default_factory=Counter)
    details: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, category: str, detail: str) -> None:
        self.counts[category] += 1
        kept = self.details[category]
        if len(kept) < DETAILS_KEPT:
            kept.append(detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class Stats:
    phase: str = "setup"
    # (phase, kind) -> status -> count; status 0 is a transport error.
    statuses: dict[tuple[str, str], Counter[int]] = field(
        default_factory=lambda: defaultdict(Counter)
    )
    # kind -> seconds of every answer in the measured window.
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: Failures = field(default_factory=Failures)
    measure_started: float = 0.0
    measure_ended: float = 0.0

    def start_measuring(self) -> None:
        self.phase = MEASURE
        self.measure_started = time.monotonic()

    def stop_measuring(self, phase: str) -> None:
        self.measure_ended = time.monotonic()
        self.phase = phase

    @property
    def measured_seconds(self) -> float:
        return max(self.measure_ended - self.measure_started, 1e-9)

    def record(self, kind: str, status: int, seconds: float) -> None:
        self.statuses[self.phase, kind][status] += 1
        if self.phase == MEASURE:
            self.latencies[kind].append(seconds)

    def fail(self, category: str, detail: str) -> None:
        self.failures.add(category, f"[{self.phase}] {detail}")

    def answered(
        self,
        kind: str,
        request: str,
        response: httpx.Response,
        seconds: float,
        expect: frozenset[int],
        body: bytes | None = None,
    ) -> bool:
        """Count an answer; a 5xx or a status outside `expect` is a failure. True when
        the status was expected. `body`: a streamed answer's bytes, to quote."""
        status = response.status_code
        self.record(kind, status, seconds)
        if status in expect:
            return True
        quoted = body[:300].decode(errors="replace") if body is not None else response.text[:300]
        where = f"{kind}: {request} -> {status} {quoted!r} (request id {_request_id(response)})"
        self.fail("5xx" if status >= 500 else "unexpected status", where)
        return False

    def transport(self, kind: str, request: str, error: BaseException) -> None:
        self.record(kind, 0, 0.0)
        self.fail("transport error", f"{kind}: {request}: {type(error).__name__}: {error}")

    def server_errors(self) -> int:
        return sum(
            count
            for counter in self.statuses.values()
            for status, count in counter.items()
            if status >= 500
        )

    def requests(self, phase: str) -> int:
        return sum(sum(c.values()) for (p, _), c in self.statuses.items() if p == phase)


def _request_id(response: httpx.Response) -> str:
    return str(response.headers.get("x-request-id", "?"))
