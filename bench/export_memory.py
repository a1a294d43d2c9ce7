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

The baseline, measured in the same run on the same database (`--no-baseline` skips it):
`bench/raw_export.py`, pure Starlette + asyncpg + orjson under Uvicorn (one worker, uvloop,
httptools, no access log, the flags of bench/floor), streaming the same rows with the
same fields and bytes as Keel's ndjson from an asyncpg server-side cursor, 1,000 rows at a
time, with no auth. For each size, `--pairs` times, the baseline's export is measured
right before Keel's ndjson export, each by a fresh server, the same way (warm-up export
matching nothing, one second's pause, RSS sampled, VmHWM reset). Reported per size: both
rows/s and Keel over baseline, both peak RSS and each export's growth over the RSS just
before it, the CPU seconds each server and the client used, and whether both bodies had
the same SHA-256 (the same bytes). CSV and gzip have no baseline.

The client sends `Accept-Encoding: identity` (no gzip measured) unless
`--encodings identity,gzip` asks for gzip too. Items are loaded with one
`INSERT ... SELECT generate_series` per step (about 30 s per million rows here).

Run from anywhere (paths are relative to this file), with PostgreSQL on 127.0.0.1:5432
(`BENCH_PG_SERVER` to change) and Keel's `.venv`:

    .venv/bin/python bench/export_memory.py
    .venv/bin/python bench/export_memory.py --sizes 100000,1000000 --formats csv
    .venv/bin/python bench/export_memory.py --formats ndjson --pairs 3

It makes the database `keel_bench_export` (dropped at the end, even on failure or Ctrl-C,
unless `--keep-db`), writes raw figures (results.json, one RSS series per run, the server
logs) to `bench/out/export-<UTC time>/`, and prints a Markdown table for bench/RESULTS.md.
Exit status 1 when a run (Keel's or the baseline's) exported the wrong number of rows or
Keel missed the memory target.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
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
    Server,
    count_items,
    cpu_seconds,
    create_user,
    free_port,
    insert_items,
    keel,
    keel_env,
    load_average,
    machine_line,
    median,
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
BENCH_DIR = Path(__file__).resolve().parent
# The flags bench/floor/run_baseline.sh gives every floor app.
UVICORN_FLAGS = [
    "--workers",
    "1",
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--no-access-log",
    "--log-level",
    "warning",
]
KEEL_APP = "keel"
RAW_APP = "raw"


class RawExportServer(Server):
    """`bench/raw_export.py` under Uvicorn, reading `database`, with this very Python."""

    name = "raw_export"
    ready_path = "/json"

    def __init__(self, database: Database, log: Path) -> None:
        port = free_port()
        env = {key: value for key, value in os.environ.items() if not key.startswith("KEEL_")}
        env["RAW_EXPORT_DSN"] = database.dsn
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "raw_export:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *UVICORN_FLAGS,
        ]
        super().__init__(command, port, env, BENCH_DIR, log)


@dataclass
class Run:
    app: str  # "keel" or "raw" (bench/raw_export.py)
    pair: int  # 1.. for a baseline-then-Keel pair, 0 for a Keel run without a baseline
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
    server_cpu_s: float
    client_cpu_s: float
    sha256: str | None
    error: str | None

    @property
    def ok_rows(self) -> bool:
        return self.error is None and self.status == 200 and self.rows == self.size

    @property
    def peak_kib(self) -> int:
        """The higher of the sampled peak and the kernel's (VmHWM since the reset)."""
        return max(self.rss_peak_kib, self.kernel_peak_kib or 0)

    @property
    def growth_kib(self) -> int:
        """Peak minus the RSS just before the export (the idle, warmed-up server)."""
        return self.peak_kib - self.rss_before_kib

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


@dataclass
class Download:
    status: int | None = None
    lines: int = 0
    body: int = 0
    wire: int = 0
    seconds: float = 0.0
    client_cpu_s: float = 0.0
    sha256: str | None = None
    error: str | None = None


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
    client: httpx.Client,
    path: str,
    params: dict[str, str],
    headers: dict[str, str],
    encoding: str,
    *,
    hash_body: bool,
) -> Download:
    """Stream the export, counting lines (and hashing the body when asked)."""
    got = Download()
    digest = hashlib.sha256() if hash_body else None
    started = time.perf_counter()
    cpu_started = time.thread_time()
    try:
        with client.stream("GET", path, params=params, headers=headers) as response:
            got.status = response.status_code
            answered = response.headers.get("content-encoding", "identity")
            if answered != encoding:
                got.error = f"asked for {encoding}, got Content-Encoding {answered}"
            chunks = response.iter_raw() if encoding == "identity" else response.iter_bytes()
            for chunk in chunks:
                got.lines += chunk.count(b"\n")
                got.body += len(chunk)
                if digest is not None:
                    digest.update(chunk)
            got.wire = response.num_bytes_downloaded
    except httpx.HTTPError as exc:
        got.error = f"{type(exc).__name__}: {exc}"
    got.seconds = time.perf_counter() - started
    got.client_cpu_s = time.thread_time() - cpu_started
    if digest is not None:
        got.sha256 = digest.hexdigest()
    return got


def measure(
    server: Server,
    app: str,
    size: int,
    fmt: str,
    encoding: str,
    *,
    pair: int,
    interval: float,
    folder: Path,
) -> Run:
    """Start `server`, warm it up, then export every row while sampling its RSS."""
    name = f"{size}-{app}-{fmt}-{encoding}" + (f"-pair{pair}" if pair else "")
    with server:
        ready = tree_rss_kib(server.pid)
        timeout = httpx.Timeout(30.0, read=300.0)
        with httpx.Client(base_url=server.base_url, timeout=timeout) as client:
            headers = {"Accept-Encoding": encoding}
            if app == KEEL_APP:
                path, params = f"{API}/items/export", {"format": fmt}
                headers["Authorization"] = f"Bearer {sign_in(client, ADMIN)}"
            else:
                path, params = "/export", {}
            # The same route and format, matching nothing: imports, the stream's session.
            warm = client.get(path, params={**params, "tag": "no-such-tag"}, headers=headers)
            warm.raise_for_status()
            time.sleep(1.0)  # let the sign-in's Argon2 memory go back before "before"
            before = tree_rss_kib(server.pid)
            # The kernel's peak too: it misses nothing between two samples.
            kernel_peak_known = reset_peak_rss(server.pid)
            cpu_before = cpu_seconds(server.pid)
            with RssSampler(server.pid, interval) as sampler:
                got = _download(
                    client,
                    path,
                    params,
                    headers,
                    encoding,
                    hash_body=fmt == "ndjson" and encoding == "identity",
                )
            server_cpu = cpu_seconds(server.pid) - cpu_before
            after = tree_rss_kib(server.pid)
            kernel_peak = tree_hwm_kib(server.pid) if kernel_peak_known else None
    if got.error is not None:
        logged = _server_errors(server.log)
        if logged:
            got.error += "; server logged: " + " | ".join(logged)
    rows = max(got.lines - 1, 0) if fmt == "csv" else got.lines  # csv: one header line
    samples_file = folder / f"rss-{name}.csv"
    samples_file.write_text(
        "seconds,rss_kib\n" + "".join(f"{t:.3f},{kib}\n" for t, kib in sampler.samples)
    )
    return Run(
        app=app,
        pair=pair,
        size=size,
        format=fmt,
        encoding=encoding,
        status=got.status,
        rows=rows,
        lines=got.lines,
        body_bytes=got.body,
        wire_bytes=got.wire,
        seconds=got.seconds,
        rss_ready_kib=ready,
        rss_before_kib=before,
        rss_peak_kib=sampler.peak_kib,
        kernel_peak_kib=kernel_peak,
        rss_after_kib=after,
        samples=len(sampler.samples),
        processes=sampler.max_processes,
        server_cpu_s=server_cpu,
        client_cpu_s=got.client_cpu_s,
        sha256=got.sha256,
        error=got.error,
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


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("a positive number")
    return value


def _verdict(run: Run) -> str:
    if not run.ok_rows:
        return f"FAILED: {run.rows:,} of {run.size:,} rows"
    if run.app != KEEL_APP:
        return "ok (baseline: no memory target)"
    return "ok" if run.peak_kib < TARGET_KIB else "over 150 MB"


def _table(runs: list[Run]) -> list[str]:
    lines = [
        (
            "| rows | app | format | encoding | rows exported | seconds | rows/s | MiB/s | "
            "RSS ready | RSS before | **peak RSS** (sampled) | VmHWM | peak - before | "
            "server CPU s | result |"
        ),
        "|" + " ---: |" + " --- |" * 3 + " ---: |" * 10 + " --- |",
    ]
    for run in runs:
        hwm = "n/a" if run.kernel_peak_kib is None else f"{mib(run.kernel_peak_kib):.1f}"
        lines.append(
            f"| {run.size:,} | {run.app} | {run.format} | {run.encoding} | {run.rows:,} | "
            f"{run.seconds:.1f} | {run.rows_per_s:,.0f} | "
            f"{run.body_bytes / 1048576 / run.seconds if run.seconds else 0:.1f} | "
            f"{mib(run.rss_ready_kib):.1f} | {mib(run.rss_before_kib):.1f} | "
            f"**{mib(run.rss_peak_kib):.1f}** | {hwm} | "
            f"{mib(run.growth_kib):+.1f} | {run.server_cpu_s:.2f} | {_verdict(run)} |"
        )
    return lines


def _pairs(runs: list[Run]) -> list[tuple[Run, Run]]:
    """(baseline, Keel) of each pair, in the order measured."""
    found: dict[tuple[int, int], dict[str, Run]] = {}
    for run in runs:
        if run.pair:
            found.setdefault((run.size, run.pair), {})[run.app] = run
    return [
        (sides[RAW_APP], sides[KEEL_APP])
        for sides in found.values()
        if RAW_APP in sides and KEEL_APP in sides
    ]


def _pair_table(pairs: list[tuple[Run, Run]]) -> list[str]:
    lines = [
        (
            "| rows | pair | Keel rows/s | baseline rows/s | **Keel ÷ baseline** | "
            "Keel peak RSS | baseline peak RSS | Keel growth | baseline growth | "
            "Keel server CPU s | baseline server CPU s | client CPU s (Keel / baseline) | "
            "same bytes |"
        ),
        "|" + " ---: |" * 12 + " --- |",
    ]
    for raw, kept in pairs:
        ratio = kept.rows_per_s / raw.rows_per_s if raw.rows_per_s else float("nan")
        if kept.sha256 is None or raw.sha256 is None:
            same = "n/a"
        else:
            same = "yes" if kept.sha256 == raw.sha256 else "**no**"
        lines.append(
            f"| {kept.size:,} | {kept.pair} | {kept.rows_per_s:,.0f} | {raw.rows_per_s:,.0f} | "
            f"**{ratio:.2f}** | {mib(kept.peak_kib):.1f} | {mib(raw.peak_kib):.1f} | "
            f"{mib(kept.growth_kib):+.1f} | {mib(raw.growth_kib):+.1f} | "
            f"{kept.server_cpu_s:.2f} | {raw.server_cpu_s:.2f} | "
            f"{kept.client_cpu_s:.2f} / {raw.client_cpu_s:.2f} | {same} |"
        )
    return lines


def _versions() -> str:
    found = []
    for package in ("uvicorn", "uvloop", "httptools", "starlette", "asyncpg", "orjson"):
        try:
            found.append(f"{package}={version(package)}")
        except PackageNotFoundError:
            found.append(f"{package}=absent")
    return " ".join(found)


def _python() -> str:
    """This Python, relative to the repository when inside it (.venv/bin/python)."""
    path = Path(sys.executable)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def _terminate(_signum: int, _frame: object) -> NoReturn:
    raise SystemExit(143)  # unwinds through the context managers: server, database


def main() -> int:  # noqa: PLR0912, PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_sizes, default=_sizes("100000,300000,1000000"))
    parser.add_argument("--formats", type=_choices({"ndjson", "csv"}), default=["ndjson", "csv"])
    parser.add_argument("--encodings", type=_choices({"identity", "gzip"}), default=["identity"])
    parser.add_argument("--interval", type=float, default=0.05, help="RSS sampling, seconds")
    parser.add_argument("--db", default="keel_bench_export", help="database to make and drop")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip bench/raw_export.py (Keel only, as before the baseline was added)",
    )
    parser.add_argument(
        "--pairs",
        type=_positive,
        default=1,
        help="baseline-then-Keel ndjson pairs per size (the ratio is their median)",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    # The baseline streams ndjson without compression: it pairs with that Keel run only.
    paired = not args.no_baseline and "ndjson" in args.formats and "identity" in args.encodings

    folder = out_dir("export")
    header = machine_line()
    load_before = load_average()
    say(header)
    say(load_before)
    say(f"raw figures in {folder.relative_to(REPO)}")
    runs: list[Run] = []
    loads: list[tuple[int, float]] = []

    def report(run: Run) -> None:
        runs.append(run)
        say(
            f"{run.size:,} {run.app} {run.format} {run.encoding}: {run.rows:,} rows in "
            f"{run.seconds:.1f} s ({run.rows_per_s:,.0f} rows/s), "
            f"peak RSS {mib(run.peak_kib):.1f} MiB (before {mib(run.rss_before_kib):.1f})"
            + (f" ERROR {run.error}" if run.error else "")
        )

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
            common = {"interval": args.interval, "folder": folder}
            for pair in range(1, args.pairs + 1) if paired else ():
                # The baseline first, then Keel: each a fresh server on the same table.
                log = folder / f"server-{size}-raw-pair{pair}.log"
                report(
                    measure(
                        RawExportServer(database, log),
                        RAW_APP,
                        size,
                        "ndjson",
                        "identity",
                        pair=pair,
                        **common,
                    )
                )
                log = folder / f"server-{size}-keel-ndjson-identity-pair{pair}.log"
                report(
                    measure(
                        KeelServer(env, log),
                        KEEL_APP,
                        size,
                        "ndjson",
                        "identity",
                        pair=pair,
                        **common,
                    )
                )
            for fmt in args.formats:
                for encoding in args.encodings:
                    if paired and (fmt, encoding) == ("ndjson", "identity"):
                        continue  # measured in the pairs above
                    log = folder / f"server-{size}-keel-{fmt}-{encoding}.log"
                    report(
                        measure(
                            KeelServer(env, log), KEEL_APP, size, fmt, encoding, pair=0, **common
                        )
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
    if paired:
        out(
            f"# baseline: bench/raw_export.py under {_python()} -m uvicorn "
            f"{' '.join(UVICORN_FLAGS)}, a fresh one per run; {_versions()}"
        )
    out(f"# RSS: VmRSS of the server process and its children, every {args.interval * 1000:.0f} ms")
    for rows, seconds in loads:
        out(f"# loaded {rows:,} items in {seconds:.1f} s ({rows / seconds:,.0f} rows/s)")
    out()
    for line in _table(runs):
        out(line)
    out()
    failed = any(not run.ok_rows for run in runs)
    pairs = _pairs(runs)
    if pairs:
        out("Keel against the baseline (ndjson, identity; growth = peak RSS - RSS before):")
        out()
        for line in _pair_table(pairs):
            out(line)
        out()
        for size in args.sizes:
            ratios = [
                kept.rows_per_s / raw.rows_per_s
                for raw, kept in pairs
                if kept.size == size and raw.rows_per_s and raw.ok_rows and kept.ok_rows
            ]
            if ratios:
                out(
                    f"- {size:,} rows: Keel rows/s ÷ baseline rows/s {median(ratios):.2f} "
                    f"(median of {len(ratios)}; range {min(ratios):.2f}-{max(ratios):.2f})"
                )
        if any(kept.sha256 != raw.sha256 for raw, kept in pairs):
            out("- the bodies differ between Keel and the baseline: the ratio is not like for like")
    for fmt in args.formats:
        for encoding in args.encodings:
            mine = [
                run
                for run in runs
                if run.app == KEEL_APP and run.format == fmt and run.encoding == encoding
            ]
            by_size: dict[int, int] = {}
            for run in mine:
                by_size[run.size] = max(by_size.get(run.size, 0), run.peak_kib)
            peaks = ", ".join(f"{size:,}: {mib(kib):.1f}" for size, kib in by_size.items())
            sizes = list(by_size)
            growth = mib(by_size[sizes[-1]] - by_size[sizes[0]])
            out(
                f"- Keel {fmt}/{encoding}: peak RSS MiB by rows {peaks}; "
                f"largest minus smallest {growth:+.1f} MiB"
            )
            failed = failed or any(run.peak_kib >= TARGET_KIB for run in mine)
    for run in runs:
        if run.error:
            out(f"  - {run.app} {run.size:,} {run.format}/{run.encoding}: {run.error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
