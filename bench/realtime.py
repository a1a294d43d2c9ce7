"""Realtime benchmark: idle WebSocket connections on one worker, and the delivery latency
of room messages to 1,000 subscribers over two workers.

Two phases against a real `keel serve` (`PHASES`, default both):

**idle** (target: `IDLE_CONNECTIONS`=5000 connections held by one worker). For each
compression setting in `IDLE_COMPRESSION` (default `deflate none`: the client offers
permessage-deflate, as browsers do, and then does not), a fresh `keel serve --workers 1`
on the embedded SQLite database, in a temporary data folder, with a first admin who signs
in once (one access token for every connection). 20 connections are opened and closed
(imports, first allocations), then after 2 s the server's RSS is read (VmRSS from
/proc/<pid>/status; with one worker `keel serve` runs Uvicorn in its own process, which
the run checks: the process tree must be that one process). Then N connections are opened,
`IDLE_OPEN_CONCURRENCY` (100) handshakes at a time, each authenticated (`AUTH=frame`: the
`auth` frame, answered `ready`; `AUTH=header`: `Authorization: Bearer` on the handshake)
and subscribed to one of `IDLE_ROOMS` (50) rooms; the time to open them all is taken.
After 5 s of settling the RSS is read again: RSS per connection = growth / N. Then the
connections stay idle for `IDLE_SECONDS` (10), over which the server's CPU time (utime +
stime from /proc/<pid>/stat) is read; then every connection must still be open, and 100
of them chosen at random send the protocol's `{"type": "ping"}` and must get `pong`
(through the server's receive loop, outbox and send loop). The server's `/metrics`
`keel_ws_connections` must say N. The client sends no protocol-level pings (a browser
does not); the server's own (every `KEEL_REALTIME_PING_INTERVAL_SECONDS`, 20 s) are
answered by the client library and may fall into the idle window.

**latency** (target: p99 under 250 ms). For each client in `CLIENTS` (below), a fresh
`keel serve --workers 2` on a fresh PostgreSQL database (`keel_bench_realtime`, migrated
with `keel db upgrade`, dropped at the end) and Redis (`BENCH_REDIS_URL`, default db 0,
with a key prefix of its own, `keel-bench-<random>:`, whose keys are deleted at the end;
nothing else in Redis is touched). `SUBSCRIBERS` (1000) connections subscribe to one
room, split over `RECEIVERS` (4) client processes (multiprocessing, spawn), each opening
`OPEN_CONCURRENCY` (50) at a time; a subscribe answered `SERVICE_UNAVAILABLE` is retried
after 0.1-0.5 s (API.md: "retry"), up to 5 times, and counted. The kernel spreads the
connections over the two workers (counted per worker from /proc: each worker's
established sockets on the port; the total from `/metrics`). One more connection, in the
main process, publishes: 3 warm-up messages (not counted), then `MESSAGES` (50) messages
one every `INTERVAL` (0.2) s on a fixed schedule, each with
`data = {"k": <number>, "t": time.time_ns()}` taken just before the send. Receivers take
`time.time_ns()` when a frame reaches them, so a latency is receive time minus send time
on one machine's clock (CLOCK_REALTIME, the same in every client process). Reported: p50,
p95, p99 and max over every (message, subscriber) pair; deliveries against
SUBSCRIBERS x MESSAGES and the missing ones (a receiver waits up to 10 s after the last
message); the same per client process with its CPU seconds (from "go" to its last
message: is the client saturated?); the publisher's own copy (its round trip through one
worker); the split at the message's `ts` (stamped by the publishing worker's handler:
send -> `ts` is the way in, `ts` -> receive is Redis, fan-out, sending and the client);
the spread from the first to the last subscriber of each message; and each worker's CPU
over the publishing window. `PYSPY=1` records both workers with `py-spy record --format
raw` (200 Hz) over the window and prints the event loop thread's samples by category of
the innermost frame (socket writes, permessage-deflate, websockets framing, the ASGI send
path, Keel's realtime and broker code, metrics, the loop); the profiler slows the
workers, so such a run's latencies are not for the table. Publishing and sign-in limits
are raised (`KEEL_REALTIME_PUBLISH_BURST`/`_PER_SECOND`, `KEEL_LIMIT_TOKEN_*`).

The receivers' client (`CLIENTS`, default `lean websockets`: both, one after the other):

- `lean`: a minimal RFC 6455 client in this file (`LeanSocket`) on uvloop: the handshake
  offers permessage-deflate as browsers do (so the server compresses as it would for
  them), frames are parsed and inflated in `data_received` and stamped there, pings
  answered; no task, queue or future per frame. About half the CPU per frame of the
  `websockets` client, so the server's share of the 2 cores is larger.
- `websockets`: the `websockets` package's asyncio client (what the idle phase and the
  tests use), one reading task per connection, stamped as each frame comes out of
  `recv`.

All client processes share the 2 cores with the two workers, Redis and PostgreSQL: the
latencies are those of a machine that also runs 1,000 clients.

Both phases raise the open-files limit (RLIMIT_NOFILE) of this process to 65536, or to its
hard limit when that cannot be raised (no CAP_SYS_RESOURCE), before any server starts, so
the servers inherit it (the report gives each server's limit from /proc/<pid>/limits).

Run from the repository root with Keel's `.venv` (`bash bench/realtime.sh` makes it):

    .venv/bin/python bench/realtime.py                     # about 2 minutes
    PHASES=latency CLIENTS=lean PYSPY=1 .venv/bin/python bench/realtime.py

Environment (defaults): PHASES="idle latency", IDLE_CONNECTIONS=5000, IDLE_ROOMS=50,
IDLE_SECONDS=10, IDLE_COMPRESSION="deflate none", IDLE_OPEN_CONCURRENCY=100, AUTH=frame,
SUBSCRIBERS=1000, MESSAGES=50, INTERVAL=0.2, RECEIVERS=4, CLIENTS="lean websockets",
OPEN_CONCURRENCY=50 (per client process), COMPRESSION=deflate (the receivers offer
permessage-deflate; `none`: they do not, so the server does not compress), WORKERS=2, PYSPY=0,
BENCH_REDIS_URL=redis://127.0.0.1:6379/0, BENCH_PG_SERVER (keel_bench.py).

Markdown on stdout, progress on stderr; exit status 1 when a target is missed. Raw figures
(results.json with every latency, the server logs, profiles) go to
`bench/out/realtime-<UTC time>/` (ignored by git). Servers run in their own process
groups and, with the client processes, are stopped, the database dropped, the Redis keys
deleted and the temporary folders removed however the run ends (error, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import multiprocessing
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any, NoReturn, cast

import httpx
import orjson
import uvloop
from keel_bench import (
    API,
    KEEL,
    REPO,
    Database,
    KeelServer,
    Server,
    cpu_seconds,
    established_on,
    free_port,
    keel,
    load_average,
    loopback_env,
    out,
    out_dir,
    process_tree,
    py_spy,
    redis_prefix,
    rss_kib,
    say,
    sign_in,
    socket_inodes,
    uvicorn_workers,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

ADMIN = "realtime-bench@example.com"
PASSWORD = "bench passphrase 2026"  # noqa: S105 - a throwaway account on a throwaway server
DB_NAME = "keel_bench_realtime"
NOFILE = 65536
IDLE_TARGET = 5000
P99_TARGET_MS = 250.0
WARMUP_CONNECTIONS = 20
WARMUP_MESSAGES = 3
SETTLE_SECONDS = 5.0
PING_SAMPLE = 100
GRACE_SECONDS = 10.0
SUBSCRIBE_TRIES = 5
FRAME_TIMEOUT = 60.0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def admin_token(base_url: str) -> str:
    with httpx.Client(base_url=base_url, timeout=30.0, trust_env=False) as client:
        return sign_in(client, ADMIN)


def _terminate(_signum: int, _frame: object) -> NoReturn:
    raise SystemExit(143)  # unwinds the `with` blocks: servers stopped, database dropped


# --- settings --------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    phases: tuple[str, ...]
    idle_connections: int
    idle_rooms: int
    idle_seconds: float
    idle_compression: tuple[str, ...]
    idle_open_concurrency: int
    open_concurrency: int
    compression: str
    auth: str
    subscribers: int
    messages: int
    interval: float
    receivers: int
    clients: tuple[str, ...]
    workers: int
    pyspy: bool
    redis_url: str

    @classmethod
    def from_env(cls) -> Config:
        get = os.environ.get
        config = cls(
            phases=tuple(get("PHASES", "idle latency").replace(",", " ").split()),
            idle_connections=int(get("IDLE_CONNECTIONS", "5000")),
            idle_rooms=int(get("IDLE_ROOMS", "50")),
            idle_seconds=float(get("IDLE_SECONDS", "10")),
            idle_compression=tuple(get("IDLE_COMPRESSION", "deflate none").split()),
            idle_open_concurrency=int(get("IDLE_OPEN_CONCURRENCY", "100")),
            open_concurrency=int(get("OPEN_CONCURRENCY", "50")),
            compression=get("COMPRESSION", "deflate"),
            auth=get("AUTH", "frame"),
            subscribers=int(get("SUBSCRIBERS", "1000")),
            messages=int(get("MESSAGES", "50")),
            interval=float(get("INTERVAL", "0.2")),
            receivers=int(get("RECEIVERS", "4")),
            clients=tuple(get("CLIENTS", "lean websockets").split()),
            workers=int(get("WORKERS", "2")),
            pyspy=get("PYSPY", "0") == "1",
            redis_url=get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        )
        if not config.phases or set(config.phases) - {"idle", "latency"}:
            raise SystemExit(f"PHASES takes idle and/or latency, not {config.phases}")
        if set(config.idle_compression) - {"deflate", "none"}:
            raise SystemExit(
                f"IDLE_COMPRESSION takes deflate and/or none: {config.idle_compression}"
            )
        if not config.clients or set(config.clients) - {"lean", "websockets"}:
            raise SystemExit(f"CLIENTS takes lean and/or websockets, not {config.clients}")
        if config.compression not in {"deflate", "none"}:
            raise SystemExit(f"COMPRESSION is deflate or none, not {config.compression!r}")
        if config.auth not in {"frame", "header"}:
            raise SystemExit(f"AUTH is frame or header, not {config.auth!r}")
        if min(config.idle_connections, config.subscribers, config.messages, config.receivers) < 1:
            raise SystemExit("IDLE_CONNECTIONS, SUBSCRIBERS, MESSAGES, RECEIVERS must be >= 1")
        return config


def raise_nofile() -> int:
    """RLIMIT_NOFILE of this process to NOFILE (or the hard limit, not being root)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, max(hard, NOFILE)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def nofile_of(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return line.split()[3]
    return "?"


def base_env() -> dict[str, str]:
    """The caller's environment without KEEL_* or proxies (no .env: cwd is a data folder)."""
    env = loopback_env("KEEL_")
    env.update(
        KEEL_ENV="development",
        KEEL_LOG_FORMAT="json",
        KEEL_FIRST_ADMIN_EMAIL=ADMIN,
        KEEL_FIRST_ADMIN_PASSWORD=PASSWORD,
        KEEL_LIMIT_TOKEN_ACCOUNT="1000/minute",  # noqa: S106 - a rate, not a secret
        KEEL_LIMIT_TOKEN_IP="1000/minute",  # noqa: S106
        KEEL_REALTIME_PUBLISH_BURST="1000",
        KEEL_REALTIME_PUBLISH_PER_SECOND="1000",
    )
    return env


def ws_gauge(base_url: str) -> float | None:
    """`keel_ws_connections` from /metrics (summed over live workers)."""
    try:
        text = httpx.get(base_url + "/metrics", timeout=10.0, trust_env=False).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("keel_ws_connections"):
            return float(line.split()[-1])
    return None


def percentile(values: list[float], share: float) -> float:
    """Nearest rank (the value at or below which `share` of them lie)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, round(share * len(ordered) + 0.4999999))
    return ordered[min(rank, len(ordered)) - 1]


def _commit() -> str:
    found = subprocess.run(  # noqa: S603 - fixed command
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(  # noqa: S603
        ["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "src"],  # noqa: S607
        check=False,
    ).returncode
    return (found or "?") + (" (src modified)" if dirty else "")


def machine() -> str:
    kib = int(Path("/proc/meminfo").read_text().split()[1])
    python = ".".join(str(part) for part in sys.version_info[:3])
    return (
        f"{os.cpu_count()} cores, {kib / 1024 / 1024:.0f} GiB, Linux {os.uname().release}, "
        f"Python {python}, commit {_commit()}"
    )


# --- the client side: shared by both phases ---------------------------------------------


async def send(ws: ClientConnection, frame: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(frame).decode())


async def receive(ws: ClientConnection, seconds: float = FRAME_TIMEOUT) -> dict[str, Any]:
    async with asyncio.timeout(seconds):
        raw = await ws.recv()
    frame: dict[str, Any] = orjson.loads(raw)
    return frame


@dataclass
class Opening:
    """What opening connections met: subscribes refused with SERVICE_UNAVAILABLE (each
    retried after a pause, as API.md tells clients), and connections that failed."""

    refused: int = 0
    errors: list[str] = field(default_factory=list)


async def open_one(
    url: str, token: str, room: str, opening: Opening, *, auth: str, compression: str
) -> ClientConnection:
    """Connected, authenticated (`ready` read) and subscribed (`subscribed` read)."""
    headers = {"Authorization": f"Bearer {token}"} if auth == "header" else None
    ws = await connect(
        url,
        additional_headers=headers,
        compression="deflate" if compression == "deflate" else None,
        proxy=None,
        ping_interval=None,  # no protocol pings from the client (a browser sends none)
        open_timeout=FRAME_TIMEOUT,
        close_timeout=5,
    )
    try:
        await _handshake(partial(send, ws), partial(receive, ws), token, room, opening, auth=auth)
    except BaseException:
        await ws.close()
        raise
    return ws


SendFrame = Callable[[dict[str, Any]], Awaitable[None]]
NextFrame = Callable[[], Awaitable[dict[str, Any]]]


async def _handshake(
    send_frame: SendFrame,
    next_frame: NextFrame,
    token: str,
    room: str,
    opening: Opening,
    *,
    auth: str,
) -> None:
    """`auth` (unless on the handshake's header), `ready`, then `subscribe`, retried
    after a pause while it is refused with SERVICE_UNAVAILABLE (API.md: retry)."""
    if auth == "frame":
        await send_frame({"type": "auth", "token": token})
    ready = await next_frame()
    if ready.get("type") != "ready":
        raise RuntimeError(f"expected ready, got {ready}")
    for attempt in range(SUBSCRIBE_TRIES):
        await send_frame({"type": "subscribe", "channel": room})
        answer = await next_frame()
        if answer == {"type": "subscribed", "channel": room}:
            return
        if answer.get("code") != "SERVICE_UNAVAILABLE" or attempt == SUBSCRIBE_TRIES - 1:
            break
        opening.refused += 1
        await asyncio.sleep(random.uniform(0.1, 0.5))  # noqa: S311 - jitter, not a secret
    raise RuntimeError(f"expected subscribed, got {answer}")


async def open_many(
    url: str, token: str, rooms: list[str], *, auth: str, compression: str, concurrency: int
) -> tuple[list[ClientConnection], Opening]:
    """One connection per entry of `rooms`, `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)
    opening = Opening()

    async def one(room: str) -> ClientConnection:
        async with gate:
            return await open_one(url, token, room, opening, auth=auth, compression=compression)

    results = await asyncio.gather(*(one(room) for room in rooms), return_exceptions=True)
    opened = [r for r in results if isinstance(r, ClientConnection)]
    opening.errors = [repr(r) for r in results if not isinstance(r, ClientConnection)]
    return opened, opening


async def close_many(connections: list[ClientConnection], concurrency: int = 200) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(ws: ClientConnection) -> None:
        async with gate:
            with contextlib.suppress(Exception):
                await ws.close()

    await asyncio.gather(*(one(ws) for ws in connections))


def own_cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


# --- phase 1: idle connections on one worker ---------------------------------------------


@dataclass
class IdleResult:
    compression: str
    auth: str
    target: int
    processes: list[int] = field(default_factory=list)
    server_nofile: str = "?"
    opened: int = 0
    open_errors: list[str] = field(default_factory=list)
    refused: int = 0
    open_seconds: float = 0.0
    rss_ready_kib: int = 0
    rss_before_kib: int = 0
    rss_after_kib: int = 0
    rss_after_idle_kib: int = 0
    idle_seconds: float = 0.0
    idle_cpu: float = 0.0
    client_idle_cpu: float = 0.0
    open_after_idle: int = 0
    pings_sent: int = 0
    pongs: int = 0
    ping_ms: list[float] = field(default_factory=list)
    gauge: float | None = None

    @property
    def rss_per_connection_kib(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / max(self.opened, 1)

    @property
    def idle_cpu_percent(self) -> float:
        return 100 * self.idle_cpu / self.idle_seconds if self.idle_seconds else 0.0

    @property
    def met(self) -> bool:
        return (
            self.opened >= self.target
            and self.open_after_idle >= self.target
            and self.pongs == self.pings_sent
        )


async def _ping(ws: ClientConnection) -> float | None:
    """Round trip of the protocol's ping frame, in ms; None without a pong."""
    started = time.perf_counter()
    try:
        await send(ws, {"type": "ping"})
        answer = await receive(ws, 10.0)
    except (TimeoutError, ConnectionClosed):
        return None
    return (time.perf_counter() - started) * 1000 if answer == {"type": "pong"} else None


async def idle_measure(config: Config, server: KeelServer, result: IdleResult) -> None:
    url = server.base_url.replace("http://", "ws://") + f"{API}/realtime"
    token = await asyncio.to_thread(admin_token, server.base_url)
    rooms = [f"room:idle-{n % config.idle_rooms}" for n in range(config.idle_connections)]
    options = {"auth": config.auth, "compression": result.compression}
    warm, warm_opening = await open_many(
        url, token, rooms[:WARMUP_CONNECTIONS], concurrency=WARMUP_CONNECTIONS, **options
    )
    if warm_opening.errors:
        raise RuntimeError(f"warm-up connections failed: {warm_opening.errors[:3]}")
    await _ping(warm[0])
    await close_many(warm)
    await asyncio.sleep(2.0)
    pid = server.pid
    result.rss_before_kib = rss_kib(pid)
    say(f"[idle/{result.compression}] RSS before: {result.rss_before_kib / 1024:.1f} MiB")
    started = time.perf_counter()
    connections, opening = await open_many(
        url, token, rooms, concurrency=config.idle_open_concurrency, **options
    )
    result.open_errors, result.refused = opening.errors, opening.refused
    result.open_seconds = time.perf_counter() - started
    result.opened = len(connections)
    say(
        f"[idle/{result.compression}] opened {result.opened}/{config.idle_connections} in "
        f"{result.open_seconds:.1f} s ({len(result.open_errors)} errors"
        + (f", first: {result.open_errors[0]}" if result.open_errors else "")
        + ")"
    )
    try:
        await asyncio.sleep(SETTLE_SECONDS)
        result.rss_after_kib = rss_kib(pid)
        say(
            f"[idle/{result.compression}] RSS after: {result.rss_after_kib / 1024:.1f} MiB "
            f"({result.rss_per_connection_kib:.1f} KiB per connection); idle "
            f"{config.idle_seconds:g} s"
        )
        cpu, client, wall = cpu_seconds(pid), own_cpu(), time.perf_counter()
        await asyncio.sleep(config.idle_seconds)
        result.idle_seconds = time.perf_counter() - wall
        result.idle_cpu = cpu_seconds(pid) - cpu
        result.client_idle_cpu = own_cpu() - client
        result.rss_after_idle_kib = rss_kib(pid)
        result.open_after_idle = sum(
            1 for ws in connections if ws.state is State.OPEN and ws.close_code is None
        )
        sample = random.sample(connections, min(PING_SAMPLE, len(connections)))
        pings = await asyncio.gather(*(_ping(ws) for ws in sample))
        result.pings_sent = len(sample)
        result.ping_ms = [ms for ms in pings if ms is not None]
        result.pongs = len(result.ping_ms)
        result.gauge = await asyncio.to_thread(ws_gauge, server.base_url)
        say(
            f"[idle/{result.compression}] after idle: {result.open_after_idle} open, "
            f"{result.pongs}/{result.pings_sent} pongs, server CPU "
            f"{result.idle_cpu_percent:.1f}% of a core, /metrics keel_ws_connections "
            f"{result.gauge}"
        )
    finally:
        await close_many(connections)


def run_idle(config: Config, compression: str, folder: Path) -> IdleResult:
    result = IdleResult(compression, config.auth, config.idle_connections)
    with tempfile.TemporaryDirectory(prefix="keel-bench-realtime-") as tmp:
        data_dir = Path(tmp)
        env = base_env()
        env["KEEL_DATA_DIR"] = str(data_dir)
        with KeelServer(env, folder / f"server-idle-{compression}.log") as server:
            result.processes = process_tree(server.pid)
            result.server_nofile = nofile_of(server.pid)
            result.rss_ready_kib = rss_kib(server.pid)
            say(
                f"[idle/{compression}] keel serve --workers 1 on {server.base_url}: "
                f"processes {result.processes}, open files limit {result.server_nofile}"
            )
            if len(result.processes) != 1:
                raise RuntimeError(f"expected one server process, found {result.processes}")
            asyncio.run(idle_measure(config, server, result))
    return result


# --- phase 2: delivery latency over two workers ------------------------------------------


def _ts_ns(ts: str) -> int:
    return (datetime.fromisoformat(ts) - EPOCH) // MICROSECOND * 1000


@dataclass
class ReceiverResult:
    index: int
    connections: int = 0
    open_errors: list[str] = field(default_factory=list)
    refused: int = 0
    # latencies_ns[k]: every subscriber's latency of message k (receive - send), ns.
    latencies_ns: list[list[int]] = field(default_factory=list)
    # server_ts_ns[k]: the message's `ts` (the publishing worker's clock, same machine).
    server_ts_ns: dict[int, int] = field(default_factory=dict)
    other_frames: list[str] = field(default_factory=list)
    closed: int = 0
    complete: int = 0
    cpu_seconds: float = 0.0
    system_seconds: float = 0.0
    wall_seconds: float = 0.0


class Tally:
    """What one client process's subscribers receive: each frame's latency, as it
    comes out of the client (`take`, called with the receive time)."""

    def __init__(self, result: ReceiverResult, messages: int) -> None:
        self.result = result
        self.messages = messages
        self.got: dict[int, int] = {}
        self.remaining = 0
        self.all_in = asyncio.Event()

    def take(self, who: int, now: int, raw: str | bytes) -> None:
        frame = orjson.loads(raw)
        if frame.get("type") != "message":
            self.result.other_frames.append(str(raw)[:200])
            return
        data = frame["data"]
        k = data["k"]
        if k < 0:
            return  # warm-up
        self.result.latencies_ns[k].append(now - data["t"])
        if k not in self.result.server_ts_ns:
            self.result.server_ts_ns[k] = _ts_ns(frame["ts"])
        got = self.got[who] = self.got.get(who, 0) + 1
        if got == self.messages:
            self.result.complete += 1
            self.remaining -= 1
            if self.remaining == 0:
                self.all_in.set()


# The lean client: RFC 6455 on a raw asyncio connection, for the receivers only.
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x8, 0x9, 0xA


class LeanSocket(asyncio.Protocol):
    """A minimal WebSocket client: the handshake (offering permessage-deflate, as
    browsers do), server frames parsed in `data_received` as the bytes arrive (each
    text message handed to `on_text` with time.time_ns() taken on arrival, and inflated
    when compressed), pings answered, masked text frames sent uncompressed. No task,
    queue or future per frame: a few microseconds per frame, so that the client costs
    the 2 shared cores as little as possible."""

    def __init__(self, host: str, path: str, *, deflate: bool) -> None:
        self.host, self.path, self.deflate = host, path, deflate
        self.key = base64.b64encode(os.urandom(16))
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.handshaken: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.inflater: Any = None
        self.fragments: list[bytes] = []
        self.message_opcode = OP_TEXT
        self.message_compressed = False
        self.setup: asyncio.Queue[bytes] = asyncio.Queue()
        self.on_text: Callable[[int, bytes], None] = lambda _now, raw: self.setup.put_nowait(raw)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # TCP (uvloop's is no subclass)
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            + (
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                if self.deflate
                else ""
            )
            + "\r\n"
        )
        self.transport.write(request.encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.setup.put_nowait(b'{"type": "connection lost"}')  # ends a handshake at once
        for waiter in (self.handshaken, self.closed):
            if not waiter.done():
                waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        self.buffer += data
        if not self.handshaken.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            del self.buffer[: end + 4]
            self._handshake(head)
        self._frames(now)

    def _handshake(self, head: list[str]) -> None:
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        accept = base64.b64encode(hashlib.sha1(self.key + WS_GUID).digest()).decode()  # noqa: S324 - RFC 6455
        if head[0].split()[1:2] != ["101"] or headers.get("sec-websocket-accept") != accept:
            self.handshaken.set_exception(RuntimeError(f"handshake refused: {head[0]}"))
            return
        if "permessage-deflate" in headers.get("sec-websocket-extensions", ""):
            self.inflater = zlib.decompressobj(wbits=-15)  # any window the server uses
        self.handshaken.set_result(None)

    def _frames(self, now: int) -> None:
        buffer, position, size = self.buffer, 0, len(self.buffer)
        while size - position >= 2:
            first, second = buffer[position], buffer[position + 1]
            length, header = second & 0x7F, 2
            if length == 126:
                if size - position < 4:
                    break
                length, header = int.from_bytes(buffer[position + 2 : position + 4]), 4
            elif length == 127:
                if size - position < 10:
                    break
                length, header = int.from_bytes(buffer[position + 2 : position + 10]), 10
            if size - position < header + length:
                break
            payload = bytes(buffer[position + header : position + header + length])
            position += header + length
            self._frame(now, first, payload)
        del buffer[:position]

    def _frame(self, now: int, first: int, payload: bytes) -> None:
        opcode = first & 0x0F
        if opcode == OP_PING:
            self.send(OP_PONG, payload)
        elif opcode == OP_CLOSE:
            self.send(OP_CLOSE, payload[:2])
            if self.transport is not None:
                self.transport.close()
        elif opcode != OP_PONG:
            if opcode != OP_CONTINUATION:
                self.message_opcode, self.fragments = opcode, []
                self.message_compressed = bool(first & 0x40)
            self.fragments.append(payload)
            if first & 0x80:
                message = b"".join(self.fragments)
                self.fragments = []
                if self.message_compressed:
                    message = self.inflater.decompress(message + b"\x00\x00\xff\xff")
                if self.message_opcode == OP_TEXT:
                    self.on_text(now, message)

    def send(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            header = bytes([0x80 | opcode, 0x80 | length])
        elif length < 65536:
            header = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2)
        else:
            header = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8)
        repeated = (mask * (length // 4 + 1))[:length]
        masked = (int.from_bytes(payload) ^ int.from_bytes(repeated)).to_bytes(length)
        self.transport.write(header + mask + masked)

    async def send_json(self, frame: dict[str, Any]) -> None:
        self.send(OP_TEXT, orjson.dumps(frame))

    async def next_setup_frame(self) -> dict[str, Any]:
        async with asyncio.timeout(FRAME_TIMEOUT):
            raw = await self.setup.get()
        frame: dict[str, Any] = orjson.loads(raw)
        return frame

    def close(self) -> None:
        self.send(OP_CLOSE, (1000).to_bytes(2))
        if self.transport is not None:
            self.transport.close()


async def lean_open(
    url: str, token: str, room: str, opening: Opening, *, deflate: bool
) -> LeanSocket:
    """A LeanSocket authenticated (auth frame, `ready`) and subscribed to `room`."""
    address = url.removeprefix("ws://")
    hostport, _, path = address.partition("/")
    host, _, port = hostport.partition(":")
    loop = asyncio.get_running_loop()
    _, socket = await loop.create_connection(
        lambda: LeanSocket(hostport, "/" + path, deflate=deflate), host, int(port)
    )
    try:
        async with asyncio.timeout(FRAME_TIMEOUT):
            await socket.handshaken
        await _handshake(
            socket.send_json, socket.next_setup_frame, token, room, opening, auth="frame"
        )
    except BaseException:
        socket.close()
        raise
    return socket


async def _open_receivers(job: ReceiverJob, tally: Tally) -> tuple[list[Any], Opening]:
    """The job's subscribers, `concurrency` at a time, each feeding `tally`; websockets
    ones get a reading task each."""
    gate = asyncio.Semaphore(job.concurrency)
    opening = Opening()

    async def one(who: int) -> Any:
        async with gate:
            if job.client == "lean":
                socket = await lean_open(
                    job.url, job.token, job.room, opening, deflate=job.compression == "deflate"
                )
                socket.on_text = lambda now, raw: tally.take(who, now, raw)
                return socket
            ws = await open_one(
                job.url, job.token, job.room, opening, auth="frame", compression=job.compression
            )
            reading.append(asyncio.create_task(_read(ws, who, tally)))
            return ws

    reading: list[asyncio.Task[None]] = []
    results = await asyncio.gather(*(one(who) for who in range(job.count)), return_exceptions=True)
    opened = [r for r in results if not isinstance(r, BaseException)]
    opening.errors = [repr(r) for r in results if isinstance(r, BaseException)]
    return [*opened, *reading], opening


async def _read(ws: ClientConnection, who: int, tally: Tally) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for raw in ws:
            tally.take(who, time.time_ns(), raw)
    tally.result.closed += 1


@dataclass(frozen=True)
class ReceiverJob:
    """What one client process is to do (sent to it when it is spawned)."""

    client: str
    index: int
    url: str
    token: str
    room: str
    count: int
    messages: int
    concurrency: int
    compression: str


async def _receiver(job: ReceiverJob, pipe: Pipe) -> ReceiverResult:
    result = ReceiverResult(job.index, latencies_ns=[[] for _ in range(job.messages)])
    tally = Tally(result, job.messages)
    things, opening = await _open_receivers(job, tally)
    result.open_errors, result.refused = opening.errors, opening.refused
    result.connections = job.count - len(opening.errors)
    tally.remaining = result.connections
    loop = asyncio.get_running_loop()
    pipe.send(("ready", result.connections, result.open_errors[:5]))
    await loop.run_in_executor(None, pipe.recv)  # "go"
    cpu, wall = own_cpu(), time.perf_counter()
    system = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    await loop.run_in_executor(None, pipe.recv)  # "end": the last message was sent
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(tally.all_in.wait(), GRACE_SECONDS)
    result.cpu_seconds = own_cpu() - cpu
    result.system_seconds = resource.getrusage(resource.RUSAGE_SELF).ru_stime - system
    result.wall_seconds = time.perf_counter() - wall
    tasks = [thing for thing in things if isinstance(thing, asyncio.Task)]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for thing in things:
        if isinstance(thing, LeanSocket):
            thing.close()
    await close_many([thing for thing in things if isinstance(thing, ClientConnection)])
    return result


def receiver_main(job: ReceiverJob, pipe: Pipe) -> None:
    """A client process: `count` subscribers of `room`; its ReceiverResult down `pipe`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    raise_nofile()
    try:
        receiving = _receiver(job, pipe)
        if job.client == "lean":
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                result = runner.run(receiving)
        else:
            result = asyncio.run(receiving)
        pipe.send(("result", asdict(result)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        pipe.send(("error", repr(exc)))


@dataclass
class WorkerStats:
    pid: int
    connections: int = 0
    cpu_seconds: float = 0.0
    system_seconds: float = 0.0  # of cpu_seconds, in the kernel (socket sends, epoll)
    rss_kib: int = 0


def system_seconds(pid: int) -> float:
    """Kernel-mode CPU seconds (stime) of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


@dataclass
class LatencyResult:
    client: str
    subscribers: int
    messages: int
    interval: float
    workers: int
    receivers: int
    compression: str = "deflate"
    processes: list[int] = field(default_factory=list)
    server_nofile: str = "?"
    open_seconds: float = 0.0
    gauge: float | None = None
    worker_stats: list[WorkerStats] = field(default_factory=list)
    window_seconds: float = 0.0
    publisher_ms: list[float] = field(default_factory=list)
    publisher_errors: list[str] = field(default_factory=list)
    send_lag_ms: list[float] = field(default_factory=list)
    # sent_ns[k]: when message k was sent (time.time_ns(), as in its `data.t`).
    sent_ns: list[int] = field(default_factory=list)
    receivers_out: list[ReceiverResult] = field(default_factory=list)
    # With PYSPY=1: per worker pid, its loop thread's samples and their shares.
    profiles: dict[int, tuple[int, list[tuple[str, float]]]] = field(default_factory=dict)

    @property
    def latencies_ms(self) -> list[float]:
        return [
            ns / 1e6
            for r in self.receivers_out
            for per_message in r.latencies_ns
            for ns in per_message
        ]

    @property
    def expected(self) -> int:
        return self.subscribers * self.messages

    @property
    def subscribed(self) -> int:
        return sum(r.connections for r in self.receivers_out)

    @property
    def refused(self) -> int:
        return sum(r.refused for r in self.receivers_out)


@contextlib.contextmanager
def profiled(enabled: bool, pids: list[int], folder: Path, label: str) -> Iterator[None]:
    """`py-spy record` of each worker while the block runs, when asked for."""
    if not enabled:
        yield
        return
    with py_spy([(pid, folder / f"pyspy-{label}-worker-{pid}.txt") for pid in pids], rate=200):
        yield


# Where a worker's event loop spends its samples, by the file of the innermost frame
# (first rule that matches wins; a stack through prometheus_client is "metrics"; an
# innermost frame whose source line calls `.write(` is "socket writes").
PROFILE_RULES = (
    ("metrics (prometheus_client)", "prometheus_client/"),
    ("permessage-deflate (zlib, per connection)", "websockets/extensions/permessage_deflate"),
    ("websockets framing", "websockets/"),
    ("Keel realtime + broker", "keel/realtime/", "keel/core/broker.py"),
    ("redis client", "redis/"),
    ("ASGI send path (Starlette, Uvicorn)", "starlette/", "uvicorn/", "fastapi/"),
    ("asyncio / uvloop loop", "asyncio/", "uvloop/"),
)


def _frame_file(frame: str) -> tuple[str, int]:
    """(path, line) of a py-spy frame `function (path:line)`; py-spy shortens paths to
    the module's (`uvicorn/...`, `asyncio/...`)."""
    where = frame.rpartition(" (")[2].rstrip(")")
    path, _, line = where.rpartition(":")
    return path, int(line) if line.isdigit() else 0


def _frame_source(frame: str) -> str:
    """The source line a py-spy frame points at ('' if it cannot be found)."""
    path, line = _frame_file(frame)
    roots = [Path(), REPO / "src", *(Path(entry) for entry in sys.path if entry)]
    for root in roots:
        candidate = root / path
        if candidate.is_file():
            lines = candidate.read_text(errors="replace").splitlines()
            return lines[line - 1] if 0 < line <= len(lines) else ""
    return ""


def profile_shares(path: Path) -> tuple[int, list[tuple[str, float]]]:
    """Samples of the event loop's thread (stacks through Uvicorn's `Server.run`) and
    their shares by category of the innermost frame."""
    counts: dict[str, int] = {}
    total = 0
    sources: dict[str, str] = {}
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if "Server.run (" not in stack:
            continue
        samples = int(number)
        total += samples
        frames = stack.split(";")
        innermost = frames[-1]
        if innermost not in sources:
            sources[innermost] = _frame_source(innermost)
        category = "other"
        if any("prometheus_client/" in frame for frame in frames):
            category = PROFILE_RULES[0][0]
        elif ".write(" in sources[innermost]:
            category = "socket writes (transport.write: the kernel's send)"
        else:
            where = _frame_file(innermost)[0]
            for name, *markers in PROFILE_RULES[1:]:
                if any(where.startswith(marker) for marker in markers):
                    category = name
                    break
        counts[category] = counts.get(category, 0) + samples
    shares = sorted(((k, v / total) for k, v in counts.items()), key=lambda kv: -kv[1])
    return total, shares if total else []


async def publish(
    config: Config, url: str, token: str, room: str, pipes: list[Pipe], result: LatencyResult
) -> tuple[float, float]:
    """The publisher: warm-up, then the measured messages on a fixed schedule. Returns
    the (start, end) perf_counter of the measured window."""
    ws = await open_one(url, token, room, Opening(), auth="frame", compression="deflate")
    echoes: dict[int, int] = {}

    async def read() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                now = time.time_ns()
                frame = orjson.loads(raw)
                if frame.get("type") == "message":
                    data = frame["data"]
                    if data["k"] >= 0:
                        echoes[data["k"]] = now - data["t"]
                else:
                    result.publisher_errors.append(str(raw)[:200])

    reader = asyncio.create_task(read())
    try:
        for k in range(-WARMUP_MESSAGES, 0):
            await send(ws, {"type": "publish", "channel": room, "data": {"k": k, "t": 0}})
            await asyncio.sleep(config.interval)
        await asyncio.sleep(1.0)
        for pipe in pipes:
            pipe.send("go")
        start = time.perf_counter()
        for k in range(config.messages):
            due = start + k * config.interval
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            result.send_lag_ms.append((time.perf_counter() - due) * 1000)
            data = {"k": k, "t": time.time_ns()}
            result.sent_ns.append(data["t"])
            await send(ws, {"type": "publish", "channel": room, "data": data})
        await asyncio.sleep(1.0)
        end = time.perf_counter()
        for pipe in pipes:
            pipe.send("end")
        await asyncio.sleep(2.0)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await ws.close()
    result.publisher_ms = [echoes[k] / 1e6 for k in sorted(echoes)]
    return start, end


def _wait_workers(server: Server, count: int, timeout: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = uvicorn_workers(server.pid)
        if len(workers) >= count:
            # Every worker answers before the clients come (each has its own lifespan).
            for _ in range(4 * count):
                httpx.get(server.base_url + "/health", timeout=10.0, trust_env=False)
            return workers
        time.sleep(0.5)
    raise RuntimeError(f"{count} workers did not start: {process_tree(server.pid)}")


def _recv(pipe: Pipe, timeout: float, what: str) -> Any:
    if not pipe.poll(timeout):
        raise RuntimeError(f"a receiver did not send {what} within {timeout:.0f} s")
    message = pipe.recv()
    if message[0] == "error":
        raise RuntimeError(f"a receiver failed: {message[1]}")
    return message


def _start_receivers(
    config: Config, client: str, url: str, token: str, room: str
) -> tuple[list[multiprocessing.process.BaseProcess], list[Pipe]]:
    context = multiprocessing.get_context("spawn")
    children: list[multiprocessing.process.BaseProcess] = []
    pipes: list[Pipe] = []
    for index in range(config.receivers):
        count = config.subscribers // config.receivers + (
            1 if index < config.subscribers % config.receivers else 0
        )
        parent, child = context.Pipe()
        process = context.Process(
            target=receiver_main,
            args=(
                ReceiverJob(
                    client,
                    index,
                    url,
                    token,
                    room,
                    count,
                    config.messages,
                    config.open_concurrency,
                    config.compression,
                ),
                child,
            ),
            name=f"realtime-receiver-{index}",
        )
        process.start()
        children.append(process)
        pipes.append(parent)
    return children, pipes


def _measure_latency(
    config: Config,
    server: Server,
    folder: Path,
    result: LatencyResult,
    children: list[multiprocessing.process.BaseProcess],
) -> None:
    room = "room:latency"
    workers = _wait_workers(server, config.workers)
    result.processes = process_tree(server.pid)
    result.server_nofile = nofile_of(workers[0])
    say(
        f"[latency] keel serve --workers {config.workers} on {server.base_url}: "
        f"processes {result.processes}, workers {workers}, open files limit "
        f"{result.server_nofile}"
    )
    token = admin_token(server.base_url)
    url = server.base_url.replace("http://", "ws://") + f"{API}/realtime"
    started = time.perf_counter()
    processes, pipes = _start_receivers(config, result.client, url, token, room)
    children.extend(processes)
    for pipe in pipes:
        _, _opened, errors = _recv(pipe, 300, "ready")
        if errors:
            say(f"[latency] a receiver's open errors: {errors}")
    result.open_seconds = time.perf_counter() - started
    time.sleep(1.0)
    established = established_on(server.port)
    result.worker_stats = [
        WorkerStats(pid, len(socket_inodes(pid) & established)) for pid in workers
    ]
    result.gauge = ws_gauge(server.base_url)
    say(
        f"[latency] {config.subscribers} subscribers in {result.open_seconds:.1f} s "
        f"over {config.receivers} client processes; per worker "
        + ", ".join(f"{w.pid}: {w.connections}" for w in result.worker_stats)
        + f"; /metrics keel_ws_connections {result.gauge}"
    )
    before = {pid: cpu_seconds(pid) for pid in workers}
    before_system = {pid: system_seconds(pid) for pid in workers}
    with profiled(config.pyspy, workers, folder, result.client):
        start, end = asyncio.run(publish(config, url, token, room, pipes, result))
    result.window_seconds = end - start
    if config.pyspy:
        for pid in workers:
            profile = folder / f"pyspy-{result.client}-worker-{pid}.txt"
            if profile.exists():
                result.profiles[pid] = profile_shares(profile)
    for stats in result.worker_stats:
        # Read 2 s after the window's end; those 2 s are idle (no messages).
        stats.cpu_seconds = cpu_seconds(stats.pid) - before[stats.pid]
        stats.system_seconds = system_seconds(stats.pid) - before_system[stats.pid]
        stats.rss_kib = rss_kib(stats.pid)
    for pipe in pipes:
        _, raw = _recv(pipe, GRACE_SECONDS + 120, "its result")
        raw["server_ts_ns"] = {int(k): v for k, v in raw["server_ts_ns"].items()}
        result.receivers_out.append(ReceiverResult(**raw))
    for process in children:
        process.join(timeout=30)


def run_latency(config: Config, client: str, folder: Path) -> LatencyResult:
    result = LatencyResult(
        client,
        config.subscribers,
        config.messages,
        config.interval,
        config.workers,
        config.receivers,
        config.compression,
    )
    children: list[multiprocessing.process.BaseProcess] = []
    with (
        tempfile.TemporaryDirectory(prefix="keel-bench-realtime-") as tmp,
        Database(DB_NAME) as database,
        redis_prefix(config.redis_url) as prefix,
    ):
        data_dir = Path(tmp)
        env = base_env()
        env.update(
            KEEL_DATA_DIR=str(data_dir),
            KEEL_DATABASE_URL=database.keel_url,
            KEEL_REDIS_URL=config.redis_url,
            KEEL_REDIS_KEY_PREFIX=prefix,
        )
        keel(env, "db", "upgrade")
        port = free_port()
        command = [
            str(KEEL),
            *("serve", "--host", "127.0.0.1", "--port", str(port)),
            *("--workers", str(config.workers)),
        ]
        try:
            with Server(
                command, port, env, data_dir, folder / f"server-latency-{client}.log"
            ) as server:
                _measure_latency(config, server, folder, result, children)
        finally:
            for process in children:
                if process.is_alive():
                    process.terminate()
                    process.join(timeout=10)
    return result


# --- the report -------------------------------------------------------------------------


def _ms(values: list[float], share: float) -> str:
    return f"{percentile(values, share):.1f}" if values else "\N{EN DASH}"


def report_idle(results: list[IdleResult]) -> list[str]:
    missed = []
    out(
        f"### Idle connections: one worker (`keel serve --workers 1`, SQLite), "
        f"target {IDLE_TARGET:,}"
    )
    out()
    out(
        "| client compression | auth | opened | time to open (s) | opened/s | RSS before (MiB) "
        "| RSS after (MiB) | **RSS per connection (KiB)** | server CPU idle (% of a core) "
        "| open after idle | pongs | ping RTT p50 / max (ms) | /metrics gauge | target |"
    )
    out("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        met = r.met and r.opened >= IDLE_TARGET
        if not met:
            missed.append(f"idle/{r.compression}")
        pings = f"{statistics.median(r.ping_ms):.1f} / {max(r.ping_ms):.1f}" if r.ping_ms else "-"
        out(
            f"| {r.compression} | {r.auth} | {r.opened:,} | {r.open_seconds:.1f} "
            f"| {r.opened / r.open_seconds:.0f} | {r.rss_before_kib / 1024:.1f} "
            f"| {r.rss_after_kib / 1024:.1f} | **{r.rss_per_connection_kib:.1f}** "
            f"| {r.idle_cpu_percent:.1f} | {r.open_after_idle:,} | {r.pongs}/{r.pings_sent} "
            f"| {pings} | {r.gauge if r.gauge is None else f'{r.gauge:.0f}'} "
            f"| {'met' if met else 'missed'} |"
        )
    out()
    for r in results:
        out(
            f"- {r.compression}: server process tree {r.processes} (one process: Uvicorn "
            f"serves in `keel serve`'s own process), open files limit {r.server_nofile}; "
            f"RSS at ready {r.rss_ready_kib / 1024:.1f} MiB, after {r.idle_seconds:.0f} s "
            f"idle {r.rss_after_idle_kib / 1024:.1f} MiB; server CPU over the idle window "
            f"{r.idle_cpu:.2f} s, the client's {r.client_idle_cpu:.2f} s"
            + (
                f"; {len(r.open_errors)} open errors, first {r.open_errors[0]}"
                if r.open_errors
                else ""
            )
            + "."
        )
    out()
    return missed


def _report_parts(r: LatencyResult) -> None:
    # The split at the server's `ts`, and the spread within each message.
    send_ts: list[float] = []
    ts_recv: list[float] = []
    spreads: list[float] = []
    per_message_p99: list[float] = []
    for k in range(r.messages):
        lat = [ns for rr in r.receivers_out for ns in rr.latencies_ns[k]]
        if not lat:
            continue
        per_message_p99.append(percentile([ns / 1e6 for ns in lat], 0.99))
        spreads.append((max(lat) - min(lat)) / 1e6)
        ts = next((rr.server_ts_ns[k] for rr in r.receivers_out if k in rr.server_ts_ns), None)
        if ts is None or k >= len(r.sent_ns):
            continue
        ingest = ts - r.sent_ns[k]
        send_ts.append(ingest / 1e6)
        ts_recv.extend((ns - ingest) / 1e6 for ns in lat)
    out("| part | p50 | p99 | max |")
    out("| --- | --- | --- | --- |")
    rows = [
        ("send -> server `ts` (the publishing worker's handler)", send_ts),
        ("server `ts` -> receive (Redis, fan-out, send, client)", ts_recv),
        ("first to last subscriber of one message (spread)", spreads),
        ("p99 of each message", per_message_p99),
        ("publisher's own copy (one connection, round trip)", r.publisher_ms),
        ("publisher's send lag behind its schedule", r.send_lag_ms),
    ]
    for label, series in rows:
        top = f"{max(series):.1f}" if series else "\N{EN DASH}"
        out(f"| {label} | {_ms(series, 0.5)} | {_ms(series, 0.99)} | {top} |")
    out()


def _report_profiles(r: LatencyResult) -> None:
    if not r.profiles:
        return
    pids = sorted(r.profiles)
    out(
        "py-spy (200 Hz) of each worker's event loop thread over the window, shares of its "
        "samples by innermost frame (PYSPY=1: the profiler slows the workers):"
    )
    out()
    out("| category | " + " | ".join(f"worker {pid}" for pid in pids) + " |")
    out("| --- |" + " --- |" * len(pids))
    names = sorted(
        {name for pid in pids for name, _ in r.profiles[pid][1]},
        key=lambda name: -sum(dict(r.profiles[pid][1]).get(name, 0.0) for pid in pids),
    )
    for name in names:
        cells = " | ".join(f"{100 * dict(r.profiles[pid][1]).get(name, 0.0):.1f}%" for pid in pids)
        out(f"| {name} | {cells} |")
    out("| samples | " + " | ".join(str(r.profiles[pid][0]) for pid in pids) + " |")
    out()


def report_latency(r: LatencyResult) -> list[str]:
    values = r.latencies_ms
    p99 = percentile(values, 0.99) if values else float("inf")
    met = len(values) == r.expected and p99 < P99_TARGET_MS
    refused = ""
    if r.refused:
        refused = f" ({r.refused} refused with SERVICE_UNAVAILABLE first, then retried)"
    out(
        f"### Delivery latency ({r.client} client): {r.subscribers:,} subscribers of one room, "
        f"`keel serve --workers {r.workers}` on PostgreSQL + Redis, target p99 < "
        f"{P99_TARGET_MS:.0f} ms"
    )
    out()
    out(
        f"{r.messages} messages, one every {r.interval * 1000:.0f} ms (after "
        f"{WARMUP_MESSAGES} warm-up ones); latency = receive time - send time (ms), over every "
        f"(message, subscriber) pair; receivers in {r.receivers} client processes, "
        + (
            "offering permessage-deflate (as browsers do)."
            if r.compression == "deflate"
            else "without permessage-deflate."
        )
    )
    out()
    out(f"Subscribed: {r.subscribed:,} of {r.subscribers:,}{refused}.")
    out()
    out("| deliveries | expected | missing | p50 | p95 | p99 | max | target |")
    out("| --- | --- | --- | --- | --- | --- | --- | --- |")
    out(
        f"| {len(values):,} | {r.expected:,} | {r.expected - len(values):,} "
        f"| {_ms(values, 0.5)} | {_ms(values, 0.95)} | **{_ms(values, 0.99)}** "
        f"| {max(values) if values else float('nan'):.1f} | {'met' if met else 'missed'} |"
    )
    out()
    _report_parts(r)
    _report_profiles(r)
    out(
        "| worker pid | connections | CPU s (of which kernel) | CPU % of a core "
        "| CPU µs per delivery | RSS (MiB) |"
    )
    out("| --- | --- | --- | --- | --- | --- |")
    window = r.window_seconds + 2.0
    for w in r.worker_stats:
        deliveries = max(w.connections * (r.messages + WARMUP_MESSAGES), 1)
        out(
            f"| {w.pid} | {w.connections} | {w.cpu_seconds:.2f} ({w.system_seconds:.2f}) "
            f"| {100 * w.cpu_seconds / window:.0f} | {1e6 * w.cpu_seconds / deliveries:.0f} "
            f"| {w.rss_kib / 1024:.0f} |"
        )
    out()
    out(
        "CPU over the publishing window: the warm-up messages, 1 s, the measured messages "
        "and 2 s after; per delivery = CPU / (connections x all those messages)."
    )
    out()
    out(
        "| client process | subscribers | subscribes refused | deliveries | p50 | p99 | max "
        "| CPU s (of which kernel) | CPU % of wall | other frames | incomplete |"
    )
    out("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for rr in r.receivers_out:
        mine = [ns / 1e6 for per in rr.latencies_ns for ns in per]
        out(
            f"| {rr.index} | {rr.connections} | {rr.refused} | {len(mine):,} | {_ms(mine, 0.5)} "
            f"| {_ms(mine, 0.99)} | {max(mine) if mine else float('nan'):.1f} "
            f"| {rr.cpu_seconds:.2f} ({rr.system_seconds:.2f}) "
            f"| {100 * rr.cpu_seconds / max(rr.wall_seconds, 1e-9):.0f} "
            f"| {len(rr.other_frames)} | {rr.connections - rr.complete} |"
        )
    out()
    out(
        f"- Server: process tree {r.processes}, open files limit {r.server_nofile}; "
        f"`/metrics` `keel_ws_connections` {r.gauge} (the subscribers; the publisher "
        f"came later); {r.subscribers} subscribers opened in {r.open_seconds:.1f} s; "
        f"measured window {r.window_seconds:.1f} s (+2 s idle in the CPU figures)."
    )
    if r.publisher_errors:
        out(f"- Publisher got other frames: {r.publisher_errors[:3]}")
    out()
    return [] if met else [f"latency/{r.client}"]


def main() -> int:
    if any(arg in {"-h", "--help"} for arg in sys.argv[1:]):
        out(__doc__ or "")
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    config = Config.from_env()
    if not KEEL.exists():
        raise SystemExit(f"{KEEL.relative_to(REPO)} is missing: run `python3 run.py keel --help`")
    limit = raise_nofile()
    folder = out_dir("realtime")
    header = machine()
    load_before = load_average()
    say(header)
    say(f"{load_before}; open files limit {limit}; raw figures in {folder.relative_to(REPO)}")
    started = time.perf_counter()
    idle = [
        run_idle(config, compression, folder)
        for compression in (config.idle_compression if "idle" in config.phases else ())
    ]
    latency = [
        run_latency(config, client, folder)
        for client in (config.clients if "latency" in config.phases else ())
    ]
    elapsed = time.perf_counter() - started
    header += f"; {load_before} at the start, {load_average()} at the end; {elapsed:.0f} s"
    (folder / "results.json").write_text(
        json.dumps(
            {
                "machine": header,
                "config": asdict(config),
                "idle": [asdict(r) for r in idle],
                "latency": [asdict(r) for r in latency],
            },
            indent=1,
        )
        + "\n"
    )
    out("## Realtime: idle connections and delivery latency")
    out()
    out(f"# {header}")
    out()
    missed = report_idle(idle) if idle else []
    for result in latency:
        missed += report_latency(result)
    if missed:
        out("Missed: " + ", ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
