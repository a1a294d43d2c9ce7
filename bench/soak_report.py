"""The soak's verdicts on the server side (RSS, processes, metrics, logs) and its
Markdown summary."""

from __future__ import annotations

from collections import Counter
from typing import Any

from keel_bench import out
from soak_drive import Outcome
from soak_procs import by_label, metric_sum
from soak_stats import MEASURE, nearest_rank
from soak_tracing import report_traces

RSS_LIMIT = 1.10


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def rss_groups(result: Outcome) -> list[tuple[str, list[int]]]:
    """(group, pids) judged as a whole: `keel serve` (master, workers and helpers) and
    `keel worker`."""
    serve = [p.pid for p in result.processes if not p.role.startswith("jobs")]
    jobs = [p.pid for p in result.processes if p.role.startswith("jobs")]
    return [("keel serve (all processes)", serve), ("keel worker", jobs)]


def judge(result: Outcome, log_errors: dict[str, list[str]]) -> None:
    """Add the server-side failures to the client-side ones."""
    stats = result.stats
    before = {(p.pid, p.role) for p in result.processes}
    after = {(p.pid, p.role) for p in result.processes_end}
    if before != after:
        stats.fail("server processes changed", f"{sorted(before)} -> {sorted(after)}")
    for group, pids in rss_groups(result):
        warm = sum(result.warm[pid].rss for pid in pids)
        end = sum(result.end[pid].rss for pid in pids)
        if warm and end > RSS_LIMIT * warm:
            stats.fail("RSS growth", f"{group}: {_mib(warm)} MiB -> {_mib(end)} MiB")
    server_5xx = sum(
        value
        for labels, value in result.api_metrics.get("keel_http_requests_total", [])
        if labels.get("status", "").startswith("5")
    )
    if server_5xx:
        stats.fail("5xx", f"the server's /metrics counts {server_5xx:.0f} answers 5xx")
    for outcome in ("failed", "not_enqueued"):
        for source in (result.api_metrics, result.jobs_metrics):
            count = metric_sum(source, "keel_jobs_total", outcome=outcome)
            if count:
                stats.fail("job not done", f"{count:.0f} jobs {outcome}")
    for line in result.load_replacements:
        stats.fail("worker replaced", line)
    for log, lines in log_errors.items():
        for line in lines:
            stats.fail("error log line", f"{log}: {line}")


def report(result: Outcome, header: list[str], settings: dict[str, Any]) -> None:
    stats = result.stats
    verdict = "PASS" if not stats.failures.total else "FAIL"
    out(f"## Soak: {settings['duration']:.0f} s of mixed traffic — {verdict}")
    out()
    for line in header:
        out(f"# {line}")
    out()
    _requests(result)
    _writes(result)
    _realtime(result)
    _jobs(result)
    _memory(result)
    if result.warm_trimmed:
        _trimmed(result)
    if result.traces:
        report_traces(result.processes, result.traces)
    if result.startup_replacements:
        out(
            f"Note: before the load started, Uvicorn replaced workers "
            f"{len(result.startup_replacements)} times (a worker that does not answer "
            "its health check within 5 s is killed and started again; slow starts on a busy "
            "machine): " + "; ".join(f"`{line}`" for line in result.startup_replacements[:6])
        )
        out()
    _failures(result)


def _requests(result: Outcome) -> None:
    stats = result.stats
    seconds = stats.measured_seconds
    out(f"### Requests in the measured window ({seconds:.0f} s, warm-up excluded)")
    out()
    out("| kind | requests | per s | statuses | p50 ms | p99 ms | max ms |")
    out("| --- | ---: | ---: | --- | ---: | ---: | ---: |")
    kinds = sorted(
        (kind for phase, kind in stats.statuses if phase == MEASURE),
        key=lambda k: -sum(stats.statuses[MEASURE, k].values()),
    )
    total = 0
    for kind in kinds:
        counts = stats.statuses[MEASURE, kind]
        count = sum(counts.values())
        total += count
        latencies = [s * 1000 for s in stats.latencies.get(kind, [])]
        shown = ", ".join(
            f"{status or 'transport error'}: {n}" for status, n in sorted(counts.items())
        )
        out(
            f"| {kind} | {count} | {count / seconds:.1f} | {shown} | "
            f"{nearest_rank(latencies, 0.5):.1f} | {nearest_rank(latencies, 0.99):.1f} | "
            f"{max(latencies, default=float('nan')):.1f} |"
        )
    out(f"| **all** | **{total}** | **{total / seconds:.1f}** | | | | |")
    out()
    phases = Counter[str]()
    for (phase, _), counts in stats.statuses.items():
        phases[phase] += sum(counts.values())
    out(
        "Whole run: "
        + ", ".join(f"{phase} {n}" for phase, n in phases.items())
        + f" requests; **5xx: {stats.server_errors()}**; transport errors: "
        + f"{sum(c[0] for c in stats.statuses.values())}."
    )
    out()


def _writes(result: Outcome) -> None:
    c = result.checked
    out("### Acknowledged writes read back at the end")
    out()
    out("| what | checked |")
    out("| --- | ---: |")
    rows = [
        ("items live (fields and version, GET and the owner's export)", c.items_live),
        ("updates acknowledged on those (PATCH/PUT with If-Match)", c.item_updates),
        ("items deleted (404)", c.items_deleted),
        ("files live (metadata, sha256 of the bytes, the owner's list)", c.files_live),
        ("files deleted (404, bytes too)", c.files_deleted),
        ("newcomers registered (welcome e-mail from keel worker)", c.newcomers),
        ("of them verified through the e-mailed token", c.newcomers_verified),
        ("item events due to realtime clients", c.item_events_expected),
        ("room messages acknowledged (echoed to their publisher)", c.room_messages_acked),
        ("room deliveries due", c.room_deliveries_expected),
    ]
    for what, count in rows:
        out(f"| {what} | {count} |")
    out()
    if c.items_uncertain or c.files_uncertain or result.uncertain_creates:
        out(
            f"Writes whose outcome is unknown (no answer or a 5xx, each a failure): items "
            f"{c.items_uncertain}, files {c.files_uncertain}, creates {result.uncertain_creates}."
        )
        out()


def _realtime(result: Outcome) -> None:
    clients = result.clients
    metrics = result.api_metrics
    out("### Realtime")
    out()
    closes = by_label(metrics, "keel_ws_closes_total", "reason")
    out(
        f"{len(clients)} clients (each on `items` and one room; "
        f"{sum(c.publisher for c in clients)} publishers), "
        f"{sum(c.connects for c in clients)} connections opened "
        f"(each reconnect resumed both channels with `since`), "
        f"{sum(c.frames for c in clients)} frames received, "
        f"{sum(c.published for c in clients)} messages published, "
        f"{sum(c.renewals for c in clients)} credential renewals; waited "
        f"{result.checked.realtime_wait_seconds:.1f} s for the last frames; publishes "
        f"sent just before a reconnect and never echoed: {result.checked.publishes_unsure}. "
        f"Server: {metric_sum(metrics, 'keel_ws_replayed_frames_total'):.0f} frames replayed "
        f"to resuming clients, {metric_sum(metrics, 'keel_ws_gaps_total'):.0f} gaps, closes "
        f"{dict(closes) or 'none'}."
    )
    out()


def _jobs(result: Outcome) -> None:
    jobs = by_label(result.jobs_metrics, "keel_jobs_total", "job", "outcome")
    enqueue = by_label(result.api_metrics, "keel_jobs_total", "job", "outcome")
    out(
        f"### Background jobs: `keel worker` ran {dict(jobs) or 'none'}; the API processes "
        f"counted {dict(enqueue) or 'nothing'}; {result.mails} e-mails written."
    )
    out()


def _memory(result: Outcome) -> None:
    out(
        "### Memory (VmRSS, median of 5 reads 1 s apart with the load paused and the "
        f"WebSockets open; limit {RSS_LIMIT:.2f}x) and connections, after the warm-up → "
        "at the end"
    )
    out()
    out(
        "| process | pid | RSS after warm-up MiB | at the end MiB | end / warm-up | anon Δ MiB "
        "| file+shmem Δ MiB | PostgreSQL conns | Redis conns | client conns | CPU s "
        "measured | % of a core |"
    )
    out("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    seconds = result.stats.measured_seconds
    for process in result.processes:
        warm, end = result.warm[process.pid], result.end[process.pid]
        cpu = result.cpu.get(process.pid)
        used = "gone | gone" if cpu is None else f"{cpu:.1f} | {100 * cpu / seconds:.0f}%"
        other = (end.file + end.shmem) - (warm.file + warm.shmem)
        out(
            f"| {process.role} | {process.pid} | {_mib(warm.rss)} | {_mib(end.rss)} | "
            f"{end.rss / warm.rss if warm.rss else float('nan'):.3f} | "
            f"{_mib(end.anon - warm.anon)} | {_mib(other)} | {warm.postgres} → {end.postgres} | "
            f"{warm.redis} → {end.redis} | {warm.clients} → {end.clients} | {used} |"
        )
    for group, pids in rss_groups(result):
        warm_total = sum(result.warm[pid].rss for pid in pids)
        end_total = sum(result.end[pid].rss for pid in pids)
        ratio = end_total / warm_total if warm_total else float("nan")
        out(
            f"| **{group}** | | **{_mib(warm_total)}** | **{_mib(end_total)}** | "
            f"**{ratio:.3f}** | | | | | | | |"
        )
    out()
    _series(result)
    out(
        f"The load generator (this one process) used {result.client_cpu:.0f} CPU s in the "
        f"measured window ({100 * result.client_cpu / seconds:.0f}% of a core)."
    )
    out()


def _trimmed(result: Outcome) -> None:
    out("RSS after `malloc_trim(0)` (MiB; diagnosis, `--malloc-trim`), after the warm-up → end:")
    out()
    for process in result.processes:
        warm = result.warm_trimmed[process.pid].rss
        end = result.end_trimmed[process.pid].rss
        if process.role.startswith(("worker", "jobs worker")):
            ratio = end / warm if warm else float("nan")
            out(f"- {process.role}: {_mib(warm)} → {_mib(end)} ({ratio:.3f})")
    out()


def _series(result: Outcome) -> None:
    """RSS while the load ran, about once a minute from the start of the warm-up."""
    if not result.series:
        return
    picked, next_at = [], 0.0
    for at, values in result.series:
        if at >= next_at:
            picked.append((at, values))
            next_at = at + 60.0
    out(
        "RSS with the load running (MiB; Argon2 hashes in flight add up to 64 MiB each), "
        "from the start of the warm-up: "
        + "; ".join(
            f"{process.role} " + " ".join(_mib(values.get(process.pid, 0)) for _, values in picked)
            for process in result.processes
            if not process.role.startswith(("helper", "master"))
        )
        + f" (at {', '.join(f'{at:.0f}' for at, _ in picked)} s)."
    )
    out()


def _failures(result: Outcome) -> None:
    failures = result.stats.failures
    if not failures.total:
        out("**No failures**: no 5xx, no unexpected status, every acknowledged write read back, ")
        out("every realtime frame due received once and in order, RSS within the limit.")
        return
    out(f"### Failures: {failures.total}")
    out()
    for category, count in failures.counts.most_common():
        out(f"- **{category}**: {count}")
        for detail in failures.details[category][:5]:
            out(f"  - `{detail}`")
    out()
