"""The soak: Keel run as production runs it, under ten minutes of mixed traffic.

    bash bench/soak.sh                      # 60 s warm-up, then 600 s measured
    bash bench/soak.sh --duration 90        # a short run

The service: `keel serve --workers 2` with `KEEL_ENV=production` (a signing key file,
a secret key and a metrics token made for the run), on a fresh PostgreSQL database
(`keel_bench_soak` on `BENCH_PG_SERVER`, migrated with `keel db upgrade`, dropped at
the end) and Redis (`--redis-url`, under a key prefix of its own whose keys are
deleted at the end), with `keel worker` running the jobs, files in a temporary folder,
the first admin from `KEEL_FIRST_ADMIN_*`, generous sign-in and registration limits,
and the periodic jobs (token purge, storage sweep) every 60 s (`--sweep-every`) so
that they run under the load.

The load (one asyncio client process; see soak_users.py, soak_others.py,
soak_realtime.py): `--users` virtual users, each on its own account and connections,
one request at a time with `--think` seconds between (exponential): items created
(half with an `Idempotency-Key`, some replayed), read (some `If-None-Match`: 304), listed,
exported (ndjson, csv), changed with PATCH and PUT under `If-Match` (some stale: 412),
deleted; files of 1 KiB to 3 MiB uploaded, downloaded whole, in ranges, through signed
links, listed and deleted; the refresh grant; password sign-ins whose session is
logged out again (its access token must then be refused). An admin reads across every
account; probes read `/health`, `/ready` and `/metrics`; a newcomer registers every
`--register-every` seconds, and verifies the address with the token from the welcome
e-mail `keel worker` writes. Realtime: one publishing client per user, `--listeners`
more and the admin's, each subscribed to `items` and one of `--rooms` rooms,
reconnecting about every `--reconnect-every` seconds and resuming both channels with
`since`.

Every answer is checked as it comes (a user's reads, pages and exports must be exactly
what it wrote). At the end of the warm-up and of the run the load is paused and the
RSS of every server process read (the median of 5 reads); then every acknowledged
write is read back, every realtime client checked for every item event and room
message it was due, and the logs for error lines.

Exit status 1 on any 5xx, lost write or failed check, or RSS at the end over 110% of
after the warm-up (for `keel serve` as a whole, and for `keel worker`). Markdown on
stdout, progress on stderr; raw figures and the servers' logs in `bench/out/soak-<time>/`.

When RSS grows, two diagnoses (soak_trace/sitecustomize.py, loaded by the servers):
`--tracemalloc` lists the Python allocations made after the warm-up that are still
held at the end, by line and call stack (it slows the servers: not for the figures);
`--malloc-trim` reads RSS again after each server calls glibc's `malloc_trim(0)`, which
tells memory the allocator kept from live data.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import uvloop
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from keel_bench import (
    KEEL,
    PASSWORD,
    PG_SERVER,
    REPO,
    Database,
    Server,
    free_port,
    keel,
    load_average,
    loopback_env,
    machine_line,
    out_dir,
    redis_prefix,
    say,
    uvicorn_workers,
)
from soak_drive import Outcome, Plan, drive
from soak_procs import error_lines, started_workers, worker_deaths
from soak_report import judge, report
from soak_tracing import FOLDER as TRACE_FOLDER

ADMIN = "soak-admin@soak.example"
GENEROUS = "1000000/minute"


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Keel's soak benchmark (see the module docstring: --help-long)."
    )
    add = parser.add_argument
    add("--duration", type=float, default=600.0, help="measured seconds (default 600)")
    add("--warmup", type=float, default=60.0, help="warm-up seconds, excluded (default 60)")
    add("--users", type=int, default=12, help="virtual users, each its own account")
    add("--think", type=float, default=0.05, help="mean pause between a user's requests, s")
    add("--admin-think", type=float, default=0.5, help="mean pause of the admin, s")
    add("--listeners", type=int, default=24, help="realtime clients that only listen")
    add("--rooms", type=int, default=4)
    add("--reconnect-every", type=float, default=45.0, help="mean life of a WebSocket, s")
    add("--publish-every", type=float, default=2.0, help="mean pause between messages, s")
    add("--register-every", type=float, default=10.0, help="seconds between newcomers")
    add(
        "--sweep-every",
        type=int,
        default=60,
        help="seconds between the periodic jobs (token purge, storage sweep); default 60",
    )
    add("--workers", type=int, default=2, help="keel serve --workers")
    add("--seed", type=int, default=1)
    add("--db", default="keel_bench_soak", help="throwaway database (keel_bench_*)")
    add("--keep-db", action="store_true")
    add("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    add(
        "--tracemalloc",
        action="store_true",
        help="trace the servers' allocations from the end of the warm-up, report what is "
        "still held at the end (slows the servers a lot, and the traces count in RSS: "
        "diagnosis only)",
    )
    add(
        "--malloc-trim",
        action="store_true",
        help="at both snapshots, read RSS again after the servers call malloc_trim(0) "
        "(diagnosis: memory the allocator kept, or live data? The trim after the warm-up "
        "lowers the end's untrimmed RSS too: judge such a run by the trimmed figures)",
    )
    add("--help-long", action="store_true", help="print the description and exit")
    return parser.parse_args()


def _terminate(_signum: int, _frame: object) -> NoReturn:
    raise SystemExit(143)  # unwinds the `with` blocks: servers stopped, database dropped


def signing_key(folder: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path = folder / "signing-key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def soak_env(
    folder: Path, database: Database, redis_url: str, prefix: str, periodic: int
) -> dict[str, str]:
    """Production settings; nothing of the caller's KEEL_* (and no .env: the servers run
    from the data folder)."""
    env = loopback_env("KEEL_")
    env.update(
        KEEL_ENV="production",
        KEEL_LOG_FORMAT="json",
        KEEL_DATA_DIR=str(folder / "data"),
        KEEL_STORAGE_LOCAL_PATH=str(folder / "files"),
        KEEL_DATABASE_URL=database.keel_url,
        KEEL_REDIS_URL=redis_url,
        KEEL_REDIS_KEY_PREFIX=prefix,
        KEEL_AUTH_SIGNING_KEY_FILES=json.dumps([str(signing_key(folder))]),
        KEEL_SECRET_KEY=secrets.token_urlsafe(32),
        KEEL_METRICS_TOKEN=secrets.token_urlsafe(24),
        KEEL_FIRST_ADMIN_EMAIL=ADMIN,
        KEEL_FIRST_ADMIN_PASSWORD=PASSWORD,
        KEEL_LIMIT_TOKEN_ACCOUNT=GENEROUS,
        KEEL_LIMIT_TOKEN_IP=GENEROUS,
        KEEL_LIMIT_REGISTER_IP=GENEROUS,
        KEEL_LIMIT_EMAIL_IP=GENEROUS,
        KEEL_JOBS_PURGE_INTERVAL_SECONDS=str(periodic),
        KEEL_STORAGE_SWEEP_INTERVAL_SECONDS=str(periodic),
    )
    (folder / "data").mkdir()
    return env


def wait_workers(server: Server, log: Path, count: int, timeout: float = 180.0) -> list[int]:
    """The worker pids once `count` of them have finished their startup and stayed the
    same for 2 s (Uvicorn replaces a worker that does not answer its health check in
    time, which a slow start on a busy machine can make happen)."""
    deadline = time.monotonic() + timeout
    seen: list[int] = []
    while time.monotonic() < deadline:
        workers = sorted(uvicorn_workers(server.pid))
        started, complete = started_workers(log)
        if len(workers) == count and set(workers) <= started and complete >= len(started):
            if workers == seen:
                return workers
            seen = workers
        else:
            seen = []
        time.sleep(1.0)
    raise RuntimeError(f"{count} workers did not start: {uvicorn_workers(server.pid)}")


def run(args: argparse.Namespace, folder: Path) -> tuple[Outcome, dict[str, list[str]]]:
    """Start everything, drive the load, and read the servers' logs before they stop:
    error lines, and workers Uvicorn replaced (at startup: a note; once the load has
    started: a failure)."""
    with (
        tempfile.TemporaryDirectory(prefix="keel-soak-") as tmp,
        Database(args.db, keep=args.keep_db) as database,
        redis_prefix(args.redis_url) as prefix,
    ):
        env = soak_env(Path(tmp), database, args.redis_url, prefix, args.sweep_every)
        keel(env, "db", "upgrade")
        port, jobs_port = free_port(), free_port()
        env["KEEL_PUBLIC_BASE_URL"] = f"http://127.0.0.1:{port}"
        env["KEEL_JOBS_WORKER_METRICS_PORT"] = str(jobs_port)
        if args.tracemalloc or args.malloc_trim:
            env["PYTHONPATH"] = os.pathsep.join(
                part for part in (str(TRACE_FOLDER), env.get("PYTHONPATH")) if part
            )
        if args.tracemalloc:
            env["SOAK_TRACEMALLOC_DIR"] = str(folder)
        if args.malloc_trim:
            env["SOAK_MALLOC_TRIM"] = "1"
        data = Path(env["KEEL_DATA_DIR"])
        serve = [
            str(KEEL),
            *("serve", "--host", "127.0.0.1", "--port", str(port)),
            *("--workers", str(args.workers)),
        ]
        serve_log, jobs_log = folder / "server.log", folder / "worker.log"
        jobs = Server([str(KEEL), "worker"], jobs_port, env, data, jobs_log)
        jobs.name, jobs.ready_path = "keel worker", "/metrics"
        with Server(serve, port, env, data, serve_log) as server, jobs:
            workers = wait_workers(server, serve_log, args.workers)
            load_starts = serve_log.stat().st_size
            say(f"keel serve on {server.base_url}: master {server.pid}, workers {workers}")
            say(f"keel worker {jobs.pid}; warm-up {args.warmup:.0f} s, then {args.duration:.0f} s")
            plan = Plan(
                base_url=server.base_url,
                metrics_url=f"http://127.0.0.1:{jobs_port}/metrics",
                metrics_token=env["KEEL_METRICS_TOKEN"],
                admin_email=ADMIN,
                password=PASSWORD,
                mail_folder=data / "mail",
                serve_pid=server.pid,
                jobs_pid=jobs.pid,
                ports={
                    "postgres": urlsplit(PG_SERVER).port or 5432,
                    "redis": urlsplit(args.redis_url).port or 6379,
                    "clients": port,
                },
                trace_folder=folder if args.tracemalloc else None,
                trim=args.malloc_trim,
                duration=args.duration,
                warmup=args.warmup,
                users=args.users,
                listeners=args.listeners,
                rooms=args.rooms,
                think=args.think,
                admin_think=args.admin_think,
                register_every=args.register_every,
                reconnect_every=args.reconnect_every,
                publish_every=args.publish_every,
                seed=args.seed,
            )
            outcome = uvloop.run(drive(plan))
            # Read before the servers stop: shutting down is not part of the soak.
            errors = {"keel serve": error_lines(serve_log), "keel worker": error_lines(jobs_log)}
            outcome.startup_replacements = worker_deaths(serve_log, 0, load_starts)
            outcome.load_replacements = worker_deaths(serve_log, load_starts)
    return outcome, errors


def main() -> int:
    args = arguments()
    if args.help_long:
        sys.stdout.write(__doc__ or "")
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    if not KEEL.exists():
        raise SystemExit(f"{KEEL.relative_to(REPO)} is missing: run `python3 run.py keel --help`")
    folder = out_dir("soak")
    machine, load_before = machine_line(), load_average()
    say(f"{machine}; {load_before}; raw figures in {folder.relative_to(REPO)}")
    started = time.monotonic()
    outcome, errors = run(args, folder)
    judge(outcome, errors)
    settings = {k: v for k, v in vars(args).items() if k != "help_long"}
    header = [
        machine,
        (
            f"{load_before} at the start, {load_average()} at the end; "
            f"{time.monotonic() - started:.0f} s in all"
        ),
        "settings: " + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in settings.items()),
    ]
    report(outcome, header, settings)
    (folder / "results.json").write_text(
        json.dumps(
            {
                "header": header,
                "checked": asdict(outcome.checked),
                "failures": {
                    "counts": dict(outcome.stats.failures.counts),
                    "details": dict(outcome.stats.failures.details),
                },
                "statuses": {
                    f"{phase} {kind}": dict(counts)
                    for (phase, kind), counts in outcome.stats.statuses.items()
                },
                "after_warmup": {pid: asdict(m) for pid, m in outcome.warm.items()},
                "end": {pid: asdict(m) for pid, m in outcome.end.items()},
                "rss_series": outcome.series,
                "processes": [asdict(p) for p in outcome.processes],
            },
            indent=1,
        )
        + "\n"
    )
    return 1 if outcome.stats.failures.total else 0


if __name__ == "__main__":
    sys.exit(main())
