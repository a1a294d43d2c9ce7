"""Where `GET /api/v1/items/{id}` spends its time: Keel's app called in-process.

No server and no HTTP: Keel's ASGI app (`create_app`, its lifespan, every middleware) is
called directly in a loop, against a throwaway PostgreSQL database (`keel_bench_profile`,
made, migrated and dropped like the items benchmarks' databases). Prints:

1. wall-clock and CPU costs, each the median of `--rounds` rounds of `--repeat`
   sequential calls (no profiler running): the whole request through the ASGI app; each
   step it takes, on its own (token check, ended-session check, the SELECT through
   SQLAlchemy's session with Keel's engine and with one without pool_pre_ping, the JSON
   body, the access log line); GET /health (the middleware alone); the same SELECT on a
   bare asyncpg pool, which is what the baseline (`raw_starlette` `GET /user/{id}`) does
   per request, and the six round trips Keel's read makes, on the same bare pool;
2. the whole request again with 1, 8 and 32 requests in flight (`--concurrency`; wrk's
   -c32 keeps 32), with this process's CPU per request and the PostgreSQL connections
   opened meanwhile;
3. sampled stacks of the sequential whole-request loop (a sampling thread reading the
   event loop thread's Python stack every 0.5 ms): the share of samples per package and
   per function, inclusive and own, and how much of the time the loop waits;
4. a cProfile of the same loop: own time per package and the top functions.

    .venv/bin/python bench/profile/item_read.py
    .venv/bin/python bench/profile/item_read.py --repeat 2000 --top 40
    .venv/bin/python bench/profile/item_read.py --setting KEEL_DATABASE_POOL_SIZE=32

The cProfile figures are inflated by the profiler's per-call cost (SQLAlchemy and
asyncio make many small calls) and its inclusive times mean little for coroutines (each
resumption counts as a call); the samples and the wall-clock table are the measure.
It writes the profile (`item_read.pstats`) and the printed report to
`bench/out/profile-item-<UTC time>/`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/: keel_bench

import asyncpg
import httpx
import structlog
import uvloop
from keel_bench import (
    PASSWORD,
    REPO,
    Database,
    create_user,
    keel,
    keel_env,
    load_average,
    machine_line,
    out_dir,
    say,
)
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

USER = "reader@bench.example"
Message = dict[str, Any]


def _terminate(_signum: int, _frame: object) -> NoReturn:
    raise SystemExit(143)  # unwinds through the context managers: the database


def _cpu() -> tuple[float, float]:
    """This process's user and system CPU seconds so far."""
    times = os.times()
    return times.user, times.system


async def _median_us(
    call: Callable[[], Awaitable[object]], repeat: int, rounds: int
) -> tuple[float, float, float, list[float]]:
    """Median over rounds of the mean wall-clock, CPU (user + system) and system CPU µs
    per call of `repeat` sequential calls, and each round's wall-clock µs. The wall clock
    also holds the waits for PostgreSQL; system CPU is the kernel's part (socket calls)."""
    walls, cpus, systems = [], [], []
    for _ in range(rounds):
        started, (user0, system0) = time.perf_counter(), _cpu()
        for _ in range(repeat):
            await call()
        walls.append((time.perf_counter() - started) / repeat * 1e6)
        user1, system1 = _cpu()
        cpus.append((user1 - user0 + system1 - system0) / repeat * 1e6)
        systems.append((system1 - system0) / repeat * 1e6)
    return statistics.median(walls), statistics.median(cpus), statistics.median(systems), walls


async def _sessions(conn: asyncpg.pool.PoolConnectionProxy[Any]) -> int:
    """Connections ever opened to this database (pg_stat_database.sessions, PostgreSQL 14+)."""
    value = await conn.fetchval(
        "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
    )
    return int(value or 0)


class AsgiGet:
    """One GET through the ASGI app; raises unless the answer is 200."""

    def __init__(self, app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> None:
        self.app = app
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"127.0.0.1:8002"), *headers],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8002),
            "state": {},
        }

    async def __call__(self) -> bytes:
        status = 0
        body = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))

        await self.app(dict(self.scope, state={}), receive, send)
        if status != 200:
            raise RuntimeError(f"GET {self.scope['path']} answered {status}: {b''.join(body)!r}")
        return b"".join(body)


def _area(filename: str) -> str:
    """The package a profiled function belongs to (site-packages name, or keel.<part>)."""
    path = filename.replace("\\", "/")
    if "/site-packages/" in path:
        return path.split("/site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/src/keel/" in path:
        rest = path.split("/src/keel/", 1)[1]
        return "keel." + rest.split("/", 1)[0].removesuffix(".py")
    if filename.startswith("<") or filename == "~":
        return "builtins / C"
    return "stdlib:" + Path(path).stem


class StackSampler:
    """Samples the Python stack of one thread every `interval` seconds (a small py-spy).

    Reads `sys._current_frames()` from a thread of its own, so it needs the GIL: with the
    switch interval lowered while it runs, samples land about every `interval` s. A sample
    whose stack holds no frame below the event loop's caller is the loop waiting (epoll:
    here, for PostgreSQL's answers) or running C/Cython code of its own (uvloop, asyncpg's
    protocol), which has no Python frames. Async stacks are whole: a running coroutine's
    frame links back through every coroutine awaiting it; SQLAlchemy's greenlets are not.
    """

    def __init__(self, thread_id: int, interval: float = 0.0005) -> None:
        self.thread_id = thread_id
        self.interval = interval
        self.samples: list[tuple[tuple[str, str], ...]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stack-sampler", daemon=True)
        self._switch = sys.getswitchinterval()

    def __enter__(self) -> StackSampler:
        sys.setswitchinterval(self.interval / 5)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        sys.setswitchinterval(self._switch)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            frame = sys._current_frames().get(self.thread_id)
            stack = []
            while frame is not None:
                stack.append((frame.f_code.co_filename, frame.f_code.co_name))
                frame = frame.f_back
            self.samples.append(tuple(reversed(stack)))  # outermost first


def _where(frame: tuple[str, str]) -> str:
    filename, name = frame
    path = filename.replace("\\", "/")
    for marker in ("/site-packages/", "/src/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = Path(path).name
    return f"{path}:{name}"


# Frames of this script and of the loop's start: on every sample, they say nothing.
_HARNESS = ("item_read.py:", "uvloop/__init__.py:", "runners.py:")


def _waiting(innermost: tuple[str, str]) -> bool:
    """The loop is in epoll when the innermost Python frame is the one that started it."""
    filename, name = innermost
    path = filename.replace("\\", "/")
    return (
        path.endswith(("uvloop/__init__.py", "asyncio/runners.py"))
        or (path.endswith("item_read.py") and name == "main")
        or name == "run_until_complete"
    )


def _sample_tables(samples: list[tuple[tuple[str, str], ...]], top: int) -> list[str]:
    """Markdown: share of samples per leaf package and per function (inclusive, own)."""
    working = [stack for stack in samples if stack and not _waiting(stack[-1])]
    idle = len(samples) - len(working)
    total = len(samples) or 1
    summary = (
        f"{len(samples):,} samples; {idle / total:.0%} with no Python frame below the event "
        "loop: waiting for PostgreSQL, or in C/Cython code the loop calls directly (uvloop's "
        "I/O, asyncpg's protocol parser, the kernel's socket calls)."
    )
    lines = [
        summary,
        "",
        "| where the running code is (innermost frame's package) | share of samples |",
        "| --- | ---: |",
    ]
    leaves: dict[str, int] = defaultdict(int)
    own: dict[str, int] = defaultdict(int)
    inclusive: dict[str, int] = defaultdict(int)
    for stack in working:
        leaves[_area(stack[-1][0])] += 1
        own[_where(stack[-1])] += 1
        for name in {_where(frame) for frame in stack}:
            if not name.startswith(_HARNESS):
                inclusive[name] += 1
    lines.append(f"| (event loop: waiting, or C/Cython called by it) | {idle / total:.0%} |")
    for area, count in sorted(leaves.items(), key=lambda item: -item[1])[:15]:
        lines.append(f"| {area} | {count / total:.0%} |")
    # SQLAlchemy's asyncio layer runs its sync code in greenlets, whose stacks end at the
    # greenlet's first frame instead of linking back to the awaiting coroutine.
    detached: dict[str, int] = defaultdict(int)
    for stack in working:
        if not any(name == "_measure" for _, name in stack):
            detached[_where(stack[0])] += 1
    if detached:
        lines += [
            "",
            "| samples not linked to the request's stack, by their outermost frame | share |",
            "| --- | ---: |",
        ]
        for name, count in sorted(detached.items(), key=lambda item: -item[1])[:5]:
            lines.append(f"| `{name}` | {count / total:.1%} |")
    lines += [
        "",
        "| function (inclusive: on the stack; the ASGI app's layers first) | share of samples |",
        "| --- | ---: |",
    ]
    for name, count in sorted(inclusive.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"| `{name}` | {count / total:.1%} |")
    lines += ["", "| function (own: innermost frame) | share of samples |", "| --- | ---: |"]
    for name, count in sorted(own.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"| `{name}` | {count / total:.1%} |")
    return lines


def _by_area(stats: pstats.Stats) -> list[tuple[str, float]]:
    """Own (tottime) seconds per package, largest first."""
    areas: dict[str, float] = defaultdict(float)
    for (filename, _line, _name), row in stats.stats.items():  # type: ignore[attr-defined]
        areas[_area(filename)] += row[2]
    return sorted(areas.items(), key=lambda item: -item[1])


async def _profile(args: argparse.Namespace, env: dict[str, str], lines: list[str]) -> None:
    os.environ.update(env)
    os.chdir(env["KEEL_DATA_DIR"])  # no .env of the repository applies
    # Imported here: Keel's settings are read from the environment just set.
    from keel.config import Settings  # noqa: PLC0415
    from keel.items.schemas import ItemRead  # noqa: PLC0415
    from keel.main import create_app  # noqa: PLC0415
    from keel.models import Item  # noqa: PLC0415

    # Keel logs (an access line per request) to stdout, as `keel serve` does; here into a
    # file, as bench/run.sh sends the server's output, and the report to the real stdout.
    report = sys.stdout
    with (args.folder / "server.log").open("a") as server_log:
        sys.stdout = server_log
        try:
            app = create_app(Settings())
            await _measure(app, args, env, lines, report, Item, ItemRead)
        finally:
            sys.stdout = report


async def _measure(  # noqa: PLR0915 - one measurement script
    app: Any,
    args: argparse.Namespace,
    env: dict[str, str],
    lines: list[str],
    report: TextIO,
    Item: Any,  # noqa: N803 - the model class, imported late
    ItemRead: Any,  # noqa: N803 - the schema class, imported late
) -> None:
    def emit(line: str = "") -> None:
        lines.append(line)
        report.write(line + "\n")
        report.flush()

    async with app.router.lifespan_context(app):
        resources = app.state.resources
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            answer = await client.post(
                "/api/v1/auth/token",
                data={"grant_type": "password", "username": USER, "password": PASSWORD},
            )
            answer.raise_for_status()
            token = answer.json()["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            created = await client.post(
                "/api/v1/items",
                json={"title": "Benchmark item", "status": "active", "tags": ["a", "b"]},
                headers=auth,
            )
            created.raise_for_status()
            item_id = created.json()["id"]
        path = f"/api/v1/items/{item_id}"
        request = AsgiGet(app, path, [(b"authorization", f"Bearer {token}".encode())])
        first = await request()
        say(f"GET {path}: {first[:80]!r}...")

        claims = resources.access_tokens.verify(token)

        async def verify() -> object:
            return resources.access_tokens.verify(token)

        async def revoked() -> object:
            return await resources.revocations.is_revoked(claims.session_id)

        async def orm_select() -> object:
            # What the route's session dependency and service.get do: check out (with
            # pool_pre_ping), BEGIN, SELECT the item as an ORM object, COMMIT.
            async with resources.sessionmaker() as session:
                return await one_item(session)

        async def one_item(session: AsyncSession) -> object:
            query = select(Item).where(Item.id == uuid.UUID(item_id), Item.owner_id == owner)
            item = (await session.scalars(query)).one()
            await session.commit()
            return item

        owner = claims.user_id
        item = await orm_select()
        # The same, on an engine of this script's without pool_pre_ping (Keel's has it on).
        no_ping = create_async_engine(env["KEEL_DATABASE_URL"], pool_pre_ping=False)
        no_ping_sessions = async_sessionmaker(no_ping, expire_on_commit=False, autoflush=False)

        async def orm_select_no_ping() -> object:
            async with no_ping_sessions() as session:
                return await one_item(session)

        async def access_line() -> None:
            # What ObservabilityMiddleware logs per request (JSON, through Keel's processors).
            structlog.get_logger("keel.access").info(
                "request",
                method="GET",
                path=path,
                route="/api/v1/items/{item_id}",
                status=200,
                duration_ms=3.21,
                bytes=270,
                client="127.0.0.1",
            )

        health = AsgiGet(app, "/health", [])

        async def body() -> object:
            return ItemRead.model_validate(item).model_dump_json().encode()

        dsn = env["KEEL_DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://", 1)
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2)
        sql = (
            "SELECT id, owner_id, title, description, status, tags, version, created_at, "
            "updated_at FROM items WHERE id = $1 AND owner_id = $2"
        )
        ids = (uuid.UUID(item_id), claims.user_id)

        async def raw_select() -> object:
            async with pool.acquire() as conn:
                return await conn.fetchrow(sql, *ids)

        async def raw_round_trips() -> object:
            # What PostgreSQL's log shows Keel sending per read (log_statement = all):
            # SQLAlchemy's asyncpg pre-ping (BEGIN; an empty statement; ROLLBACK), then the
            # request's transaction (BEGIN; the SELECT; COMMIT). Six round trips.
            async with pool.acquire() as conn:
                ping = conn.transaction()
                await ping.start()
                await conn.fetchrow(";")
                await ping.rollback()
                async with conn.transaction():
                    return await conn.fetchrow(sql, *ids)

        try:
            steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                ("whole request through Keel's ASGI app", request),
                ("  access token check (PyJWT, ES256 verify)", verify),
                ("  ended-session check (in process, no Redis)", revoked),
                ("  session + SELECT item (SQLAlchemy ORM, pre-ping, BEGIN, COMMIT)", orm_select),
                (
                    "  the same without pool_pre_ping (an engine of this script's)",
                    orm_select_no_ping,
                ),
                ("  ItemRead.model_validate(item).model_dump_json()", body),
                ("  the access log line (structlog, JSON, to a file)", access_line),
                ("GET /health through Keel's ASGI app (middleware, no access line)", health),
                (
                    "same SELECT on a bare asyncpg pool (the baseline's per-request work)",
                    raw_select,
                ),
                (
                    "bare asyncpg, Keel's 6 round trips: BEGIN, ;, ROLLBACK, BEGIN, SELECT, COMMIT",
                    raw_round_trips,
                ),
            ]
            for _, call in steps:  # warm up every path once more
                for _ in range(50):
                    await call()
            emit(f"## Wall clock, sequential: median of {args.rounds} rounds of {args.repeat}")
            emit()
            emit(
                "| step | wall µs per call | CPU µs per call | of which system | rounds (wall µs) |"
            )
            emit("| --- | ---: | ---: | ---: | --- |")
            for label, call in steps:
                wall, cpu, system, rounds = await _median_us(call, args.repeat, args.rounds)
                emit(
                    f"| {label} | {wall:,.0f} | {cpu:,.0f} | {system:,.0f} | "
                    f"{', '.join(f'{r:,.0f}' for r in rounds)} |"
                )
            emit()
            emit(
                "Requests in flight (each of N tasks sends its next request when its last is "
                "answered, like wrk's connections); `sessions` = PostgreSQL connections opened "
                "meanwhile (pg_stat_database.sessions of this database):"
            )
            emit()
            emit("| in flight | requests | req/s | CPU µs per request | sessions opened |")
            emit("| ---: | ---: | ---: | ---: | ---: |")
            async with pool.acquire() as stats_conn:
                for flight in args.concurrency:
                    each = max(1, args.repeat // flight)

                    async def worker(count: int = each) -> None:
                        for _ in range(count):
                            await request()

                    opened = await _sessions(stats_conn)
                    started, cpu_started = time.perf_counter(), time.process_time()
                    await asyncio.gather(*(worker() for _ in range(flight)))
                    seconds = time.perf_counter() - started
                    cpu = time.process_time() - cpu_started
                    opened = await _sessions(stats_conn) - opened
                    done = each * flight
                    emit(
                        f"| {flight} | {done:,} | {done / seconds:,.0f} | "
                        f"{cpu / done * 1e6:,.0f} | {opened:,} |"
                    )
            emit()

            with StackSampler(threading.get_ident()) as sampler:
                for _ in range(args.repeat):
                    await request()
            emit(f"## Sampled stacks of {args.repeat} sequential requests (no cProfile)")
            emit()
            for line in _sample_tables(sampler.samples, args.top):
                emit(line)
            emit()

            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.repeat):
                await request()
            profiler.disable()
        finally:
            await pool.close()
            await no_ping.dispose()
    folder = args.folder
    profiler.dump_stats(folder / "item_read.pstats")
    stats = pstats.Stats(profiler)
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    emit(f"## cProfile of {args.repeat} sequential requests: own time per package")
    emit()
    emit("| package | own s | share |")
    emit("| --- | ---: | ---: |")
    for area, seconds in _by_area(stats)[:20]:
        emit(f"| {area} | {seconds:.3f} | {seconds / total:.0%} |")
    emit()
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(args.top)
    emit(f"## cProfile: top {args.top} functions by own time")
    emit()
    emit("```")
    text = buffer.getvalue()
    emit(text[text.find("   ncalls") :].rstrip())
    emit("```")
    emit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (median taken)")
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 8, 32],
        help="requests in flight, comma-separated levels (default 1,8,32)",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="KEEL_NAME=VALUE",
        help="a Keel setting for the app (repeatable), e.g. KEEL_DATABASE_POOL_SIZE=32",
    )
    parser.add_argument("--top", type=int, default=30, help="functions listed")
    parser.add_argument("--db", default="keel_bench_profile", help="database to make and drop")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    args.folder = out_dir("profile-item")
    lines = [f"# {machine_line()}", f"# {load_average()} at the start"]
    sys.stdout.write("\n".join(lines) + "\n")
    with (
        tempfile.TemporaryDirectory(prefix="keel-bench-profile-") as tmp,
        Database(args.db) as database,
        contextlib.chdir(REPO),  # the original folder again when it ends
    ):
        env = keel_env(database, Path(tmp))
        for setting in args.setting:
            name, _, value = setting.partition("=")
            if not name.startswith("KEEL_"):
                raise SystemExit(f"--setting takes KEEL_NAME=VALUE, not {setting!r}")
            env[name] = value
        if args.setting:
            lines.append(f"# settings: {' '.join(args.setting)}")
        keel(env, "db", "upgrade")
        create_user(env, USER)
        # The event loop `keel serve` runs on.
        uvloop.run(_profile(args, env, lines))
    lines.append(f"# {load_average()} at the end")
    (args.folder / "report.md").write_text("\n".join(lines) + "\n")
    say(f"report and profile in {args.folder.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
