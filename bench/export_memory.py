"""Export benchmark: memory and speed of `GET /api/v1/items/export` as the rows grow.

What it measures, for each size (default 100,000, 300,000 and 1,000,000 items) and each
format (ndjson, csv): a real `keel serve --workers 1` is started against a throwaway
PostgreSQL database holding that many items of one admin; the admin signs in, one warm-up
export that matches nothing runs (imports, the streaming session), then the whole export
is downloaded by a streaming client that counts lines and throws the bytes away, while a
thread samples the server's resident memory (VmRSS of the `keel serve` process and any
children, from /proc) every 50 ms. Reported per run: rows exported (must equal the rows in
the table), seconds, rows/s, RSS when the server was ready, RSS just before the export
(after sign-in and warm-up), peak RSS during the export (sampled, and VmHWM, the kernel's
own peak, reset just before the export), and peak minus before. Each run gets a fresh
server, so one run's heap does not carry into the next.

The target (issue: export): peak RSS under 150 MB (143 MiB), flat as the rows grow.

The client sends `Accept-Encoding: identity` (no gzip measured) unless
`--encodings identity,gzip` asks for gzip too. Items are loaded with one
`INSERT ... SELECT generate_series` per step (about 30 s per million rows here).

Run from anywhere (paths are relative to this file), with PostgreSQL on 127.0.0.1:5432
(`BENCH_PG_SERVER` to change) and Keel's `.venv`:

    .venv/bin/python bench/export_memory.py
    .venv/bin/python bench/export_memory.py --sizes 100000,1000000 --formats csv

It makes the database `keel_bench_export` (dropped at the end, even on failure or Ctrl-C,
unless `--keep-db`), writes raw figures (results.json, one RSS series per run, the server
logs) to `bench/out/export-<UTC time>/`, and prints a Markdown table for bench/RESULTS.md.
Exit status 1 when a run exported the wrong number of rows or missed the memory target.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
from keel_bench import (
    API,
    KEEL,
    REPO,
    Database,
    KeelServer,
    RssSampler,
    count_items,
    create_user,
    insert_items,
    keel,
    keel_env,
    load_average,
    machine_line,
    mib,
    out,
    out_dir,
    reset_peak_rss,
    say,
    sign_in,
    tree_hwm_kib,
    tree_rss_kib,
)

ADMIN = "admin@bench.example"
TARGET_BYTES = 150_000_000  # "under 150 MB": read strictly, 143.05 MiB
TARGET_KIB = TARGET_BYTES // 1024


@dataclass
class Run:
    size: int
    format: str
    encoding: str
    status: int | None
    rows: int
    lines: int
    body_bytes: int
    wire_bytes: int
    seconds: float
    rss_ready_kib: int
    rss_before_kib: int
    rss_peak_kib: int
    kernel_peak_kib: int | None
    rss_after_kib: int
    samples: int
    processes: int
    error: str | None

    @property
    def ok_rows(self) -> bool:
        return self.error is None and self.status == 200 and self.rows == self.size

    @property
    def peak_kib(self) -> int:
        """The higher of the sampled peak and the kernel's (VmHWM since the reset)."""
        return max(self.rss_peak_kib, self.kernel_peak_kib or 0)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def _server_errors(log: Path) -> list[str]:
    """`exc_type: exc_value` of each error the server logged (JSON lines)."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("level") != "error":
            continue
        for exception in event.get("exception") or []:
            text = f"{exception.get('exc_type')}: {exception.get('exc_value')}"
            if text not in found:
                found.append(text)
    return found


def _download(
    client: httpx.Client, fmt: str, headers: dict[str, str], encoding: str
) -> tuple[int | None, int, int, int, float, str | None]:
    """Stream the export; (status, lines, body bytes, wire bytes, seconds, error)."""
    status: int | None = None
    lines = body = wire = 0
    error = None
    started = time.perf_counter()
    try:
        with client.stream(
            "GET", f"{API}/items/export", params={"format": fmt}, headers=headers
        ) as response:
            status = response.status_code
            got = response.headers.get("content-encoding", "identity")
            if got != encoding:
                error = f"asked for {encoding}, got Content-Encoding {got}"
            chunks = response.iter_raw() if encoding == "identity" else response.iter_bytes()
            for chunk in chunks:
                lines += chunk.count(b"\n")
                body += len(chunk)
            wire = response.num_bytes_downloaded
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    return status, lines, body, wire, time.perf_counter() - started, error


def measure(
    env: dict[str, str],
    size: int,
    fmt: str,
    encoding: str,
    *,
    interval: float,
    folder: Path,
) -> Run:
    name = f"{size}-{fmt}-{encoding}"
    log = folder / f"server-{name}.log"
    with KeelServer(env, log) as server:
        ready = tree_rss_kib(server.pid)
        timeout = httpx.Timeout(30.0, read=300.0)
        with httpx.Client(base_url=server.base_url, timeout=timeout) as client:
            token = sign_in(client, ADMIN)
            headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": encoding}
            # The same route and format, matching nothing: imports, the stream's session.
            warm = client.get(
                f"{API}/items/export",
                params={"format": fmt, "tag": "no-such-tag"},
                headers=headers,
            )
            warm.raise_for_status()
            time.sleep(1.0)  # let the sign-in's Argon2 memory go back before "before"
            before = tree_rss_kib(server.pid)
            # The kernel's peak too: it misses nothing between two samples.
            kernel_peak_known = reset_peak_rss(server.pid)
            with RssSampler(server.pid, interval) as sampler:
                status, lines, body, wire, seconds, error = _download(
                    client, fmt, headers, encoding
                )
            after = tree_rss_kib(server.pid)
            kernel_peak = tree_hwm_kib(server.pid) if kernel_peak_known else None
    if error is not None:
        logged = _server_errors(log)
        if logged:
            error += "; server logged: " + " | ".join(logged)
    rows = max(lines - 1, 0) if fmt == "csv" else lines  # csv: one header line
    samples_file = folder / f"rss-{name}.csv"
    samples_file.write_text(
        "seconds,rss_kib\n" + "".join(f"{t:.3f},{kib}\n" for t, kib in sampler.samples)
    )
    return Run(
        size=size,
        format=fmt,
        encoding=encoding,
        status=status,
        rows=rows,
        lines=lines,
        body_bytes=body,
        wire_bytes=wire,
        seconds=seconds,
        rss_ready_kib=ready,
        rss_before_kib=before,
        rss_peak_kib=sampler.peak_kib,
        kernel_peak_kib=kernel_peak,
        rss_after_kib=after,
        samples=len(sampler.samples),
        processes=sampler.max_processes,
        error=error,
    )


def _sizes(text: str) -> list[int]:
    sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("sizes are positive row counts, e.g. 100000,1000000")
    return sizes


def _choices(allowed: set[str]) -> Any:
    def parse(text: str) -> list[str]:
        picked = [part.strip() for part in text.split(",") if part.strip()]
        wrong = [part for part in picked if part not in allowed]
        if wrong or not picked:
            raise argparse.ArgumentTypeError(f"choose from {sorted(allowed)}")
        return picked

    return parse


def _table(runs: list[Run]) -> list[str]:
    lines = [
        (
            "| rows | format | encoding | rows exported | seconds | rows/s | MiB/s | RSS ready | "
            "RSS before | **peak RSS** (sampled) | VmHWM | peak - before | result |"
        ),
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for run in runs:
        hwm = "n/a" if run.kernel_peak_kib is None else f"{mib(run.kernel_peak_kib):.1f}"
        if not run.ok_rows:
            verdict = f"FAILED: {run.rows:,} of {run.size:,} rows"
        elif run.peak_kib < TARGET_KIB:
            verdict = "ok"
        else:
            verdict = "over 150 MB"
        lines.append(
            f"| {run.size:,} | {run.format} | {run.encoding} | {run.rows:,} | "
            f"{run.seconds:.1f} | {run.rows_per_s:,.0f} | "
            f"{run.body_bytes / 1048576 / run.seconds if run.seconds else 0:.1f} | "
            f"{mib(run.rss_ready_kib):.1f} | {mib(run.rss_before_kib):.1f} | "
            f"**{mib(run.rss_peak_kib):.1f}** | {hwm} | "
            f"{mib(run.peak_kib - run.rss_before_kib):+.1f} | {verdict} |"
        )
    return lines


def _terminate(_signum: int, _frame: object) -> NoReturn:
    raise SystemExit(143)  # unwinds through the context managers: server, database


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_sizes, default=_sizes("100000,300000,1000000"))
    parser.add_argument("--formats", type=_choices({"ndjson", "csv"}), default=["ndjson", "csv"])
    parser.add_argument("--encodings", type=_choices({"identity", "gzip"}), default=["identity"])
    parser.add_argument("--interval", type=float, default=0.05, help="RSS sampling, seconds")
    parser.add_argument("--db", default="keel_bench_export", help="database to make and drop")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)

    folder = out_dir("export")
    header = machine_line()
    load_before = load_average()
    say(header)
    say(load_before)
    say(f"raw figures in {folder.relative_to(REPO)}")
    runs: list[Run] = []
    loads: list[tuple[int, float]] = []
    with (
        tempfile.TemporaryDirectory(prefix="keel-bench-export-") as tmp,
        Database(args.db, keep=args.keep_db) as database,
    ):
        env = keel_env(database, Path(tmp))
        keel(env, "db", "upgrade")
        admin_id = create_user(env, ADMIN, admin=True)
        loaded = 0
        for size in args.sizes:
            added = size - loaded
            seconds = insert_items(database, loaded + 1, size, [admin_id])
            loads.append((added, seconds))
            loaded = size
            if count_items(database) != size:
                raise RuntimeError(f"expected {size} items after loading")
            say(f"{size:,} items ({added:,} loaded in {seconds:.1f} s)")
            for fmt in args.formats:
                for encoding in args.encodings:
                    run = measure(
                        env,
                        size,
                        fmt,
                        encoding,
                        interval=args.interval,
                        folder=folder,
                    )
                    runs.append(run)
                    say(
                        f"{size:,} {fmt} {encoding}: {run.rows:,} rows in {run.seconds:.1f} s, "
                        f"peak RSS {mib(run.peak_kib):.1f} MiB "
                        f"(before {mib(run.rss_before_kib):.1f})"
                        + (f" ERROR {run.error}" if run.error else "")
                    )
    (folder / "results.json").write_text(
        json.dumps(
            {"machine": header, "loads": loads, "runs": [asdict(run) for run in runs]}, indent=2
        )
    )

    out(f"# {header}")
    out(f"# {load_before} at the start, {load_average()} at the end")
    out(
        f"# server: {KEEL.relative_to(REPO)} serve --workers 1 (KEEL_LOG_FORMAT=json), "
        "a fresh one per run"
    )
    out(f"# RSS: VmRSS of the server process and its children, every {args.interval * 1000:.0f} ms")
    for rows, seconds in loads:
        out(f"# loaded {rows:,} items in {seconds:.1f} s ({rows / seconds:,.0f} rows/s)")
    out()
    for line in _table(runs):
        out(line)
    out()
    failed = False
    for fmt in args.formats:
        for encoding in args.encodings:
            mine = [run for run in runs if run.format == fmt and run.encoding == encoding]
            peaks = ", ".join(f"{run.size:,}: {mib(run.peak_kib):.1f}" for run in mine)
            growth = mib(mine[-1].peak_kib - mine[0].peak_kib)
            out(
                f"- {fmt}/{encoding}: peak RSS MiB by rows {peaks}; "
                f"largest minus smallest {growth:+.1f} MiB"
            )
            for run in mine:
                if run.error:
                    out(f"  - {run.size:,}: {run.error}")
            failed = failed or any(not run.ok_rows or run.peak_kib >= TARGET_KIB for run in mine)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
