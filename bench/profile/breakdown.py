"""Where a py-spy profile of `keel serve` goes: samples per category, as a Markdown table.

    python3 bench/profile/breakdown.py PROFILE [PROFILE ...] [options]

PROFILE is py-spy output of one server process: `--format speedscope` (JSON; preferred,
it keeps the order of the samples, which stall detection needs) or `--format raw`
(collapsed stacks, "frame;frame;... count"). Several files are added up. Record with
`--threads` so that the event loop's thread can be told apart (`--thread`, default
MainThread); a profile without thread ids is taken whole. Standard library only.

Columns: samples, their share of all the thread's non-idle samples (py-spy leaves out
samples of a sleeping thread), their share of the samples that are not stalls (see 1.
below: the share to compare between runs), and two per-request costs, both taken from
the share without stalls:

- µs/req: share x 1 / throughput. With `--plain-rps` (hotpaths.sh passes the throughput
  of the run *without* the profiler, so the profiler's own slowdown is left out) or else
  from the profiled window (`--requests N --seconds S`: S / N).
- CPU µs/req: share x (the event loop thread's CPU per request minus the garbage
  collector's), with `--plain-loop-cpu-us` and `--plain-gc-us` (from /proc schedstat and
  gcstats in the run without the profiler), or else `--loop-cpu-seconds`/`--gc-seconds`
  of the profiled window. The garbage collector gets its own row: py-spy cannot see a
  collection and charges it to whichever line allocated the object that set it off
  (short ones), or it shows as a stall (full ones).

The other window figures (`--cpu-seconds` of the whole process, `--loop-wait-seconds`,
`--gc-detail`) only go to the header line. `bench/profile/hotpaths.sh` passes all of them.

How a sample gets its category (the rules are RULES below, in order):

1. A run of `--stall-samples` (default 10, i.e. 20 ms at 500 Hz) or more consecutive
   samples with the very same stack, line numbers included, is a *stall*: no request
   code stays on one line that long here, but a full garbage collection (charged by
   py-spy to whichever line allocated the object that set it off) or the thread being
   descheduled does. Stalls get their own row (speedscope input only: raw files have no
   order). Compare them with the GC seconds that hotpaths.sh measures (`--gc-seconds`).
2. A sample with no Python frame at all is "no Python frame" (most likely a greenlet
   being switched: SQLAlchemy's sync code runs in greenlets, whose stacks py-spy shows
   without their parents, and for a moment without any frame).
3. Otherwise the frames are walked from the innermost (leaf) outwards, and the first
   frame that matches a rule gives the category: a rule is a file pattern and an
   optional function pattern; files are as py-spy shortens them (`sqlalchemy/orm/
   session.py`, `keel/auth/deps.py`, `asyncio/tasks.py`). Frames of no rule (contextlib,
   typing, weakref, anyio, starlette/datastructures.py, sqlalchemy/util, sqlalchemy/event,
   sqlalchemy/sql/base.py and visitors.py, json, uuid, ...) are *transparent*: their time
   goes to the nearest classified caller. So a category holds its own code's self time
   plus the helpers it calls, but not the inner categories it calls: FastAPI's
   dependency resolution does not include the Keel dependencies it runs, the
   observability middleware does not include the structlog line or Prometheus, a
   session commit does not include asyncpg.
4. Only the event loop's own frame left (`Runner.run` of asyncio/runners.py, leaf):
   uvloop's C code (libuv polling, transport writes, and the C parts of asyncpg's and
   httptools' protocols that run as loop callbacks).
5. Nothing matched: "other: <package of the leaf frame>".

`--detail TEXT` lists, for each category whose name contains TEXT, the functions its
samples were in (leaf frames): what "SQLAlchemy: statement construction" is made of.

"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

Frame = tuple[str, str, int]  # function, shortened file, line
Stack = tuple[Frame, ...]  # outermost first

# (group, category, file regex, function regex or None). Order matters only between
# rules that can match the same frame: the first one wins.
SA_SESSIONS = (
    r"sqlalchemy/(orm/session|ext/asyncio/session|ext/asyncio/engine|engine/base"
    r"|connectors/asyncio|dialects/postgresql/asyncpg)\.py"
)
RULES: list[tuple[str, str, str, str | None]] = [
    # --- asyncpg (the driver; its Cython protocol has no Python frames, so its time is
    # the self time of the Python frame that called into it, or loop callbacks)
    (
        "asyncpg",
        "asyncpg: opening/closing connections (pool overflow churn, SSL probe)",
        r"asyncpg/connect_utils\.py|^ssl\.py",
        None,
    ),
    (
        "asyncpg",
        "asyncpg: opening/closing connections (pool overflow churn, SSL probe)",
        r"asyncpg/connection\.py",
        r"^(connect|_connect|close|_cleanup|terminate|Connection\.(close|_cleanup|terminate|__init__|_abort))$",
    ),
    ("asyncpg", "asyncpg: queries (prepare, bind/execute, protocol)", r"^asyncpg/", None),
    # --- SQLAlchemy
    (
        "SQLAlchemy",
        "SQLAlchemy: greenlet hops (greenlet_spawn / await_only)",
        r"sqlalchemy/util/(_concurrency_py3k|concurrency)\.py|^greenlet/",
        None,
    ),
    (
        "SQLAlchemy",
        "SQLAlchemy: pool checkout/checkin (+ Keel's idle-ping listeners)",
        r"sqlalchemy/pool/",
        None,
    ),
    (
        "SQLAlchemy",
        "SQLAlchemy: pool checkout/checkin (+ Keel's idle-ping listeners)",
        r"keel/core/db\.py",
        r"_ping_if_idle|_idle_from_now",
    ),
    (
        "SQLAlchemy",
        "SQLAlchemy: commit/rollback",
        SA_SESSIONS,
        r"commit|rollback|_prepare_impl|_remove_snapshot|_restore_snapshot",
    ),
    (
        "SQLAlchemy",
        "SQLAlchemy: ORM flush (unit of work, INSERT/UPDATE)",
        r"sqlalchemy/orm/(unitofwork|persistence|dependency|sync)\.py",
        None,
    ),
    (
        "SQLAlchemy",
        "SQLAlchemy: ORM flush (unit of work, INSERT/UPDATE)",
        r"sqlalchemy/orm/session\.py",
        r"flush",
    ),
    (
        "SQLAlchemy",
        "SQLAlchemy: session/connection setup and close",
        SA_SESSIONS,
        r"__init__|close|_close_impl|expunge_all|_connection_for_bind|connection$|_connection$|_autobegin|begin|_take_snapshot|_maker_context_manager|__enter__|__exit__|__aenter__|__aexit__|__call__|_new_sessiontransaction|in_transaction|_revalidate_connection|_iterate_self_and_parents|_get_bind|get_bind|_trans_ctx|_execution_options|set_connection_execution_options|_set_connection_characteristics|_set_isolation_level|set_isolation_level|reset",
    ),
    (
        "SQLAlchemy",
        "SQLAlchemy: session/connection setup and close",
        r"sqlalchemy/ext/asyncio/base\.py",
        None,
    ),
    (
        "SQLAlchemy",
        "SQLAlchemy: compile, cache key, ORM compile state",
        r"sqlalchemy/sql/(compiler|cache_key|traversals)\.py",
        None,
    ),
    (
        "SQLAlchemy",
        "SQLAlchemy: ORM objects (rows to objects, identity map, attributes)",
        r"sqlalchemy/orm/context\.py",
        r"orm_setup_cursor_result|_setup_for_generate|instances",
    ),
    (
        "SQLAlchemy",
        "SQLAlchemy: compile, cache key, ORM compile state",
        r"sqlalchemy/orm/context\.py",
        None,
    ),
    (
        "SQLAlchemy",
        "SQLAlchemy: result (cursor result, rows, type processors)",
        r"sqlalchemy/engine/(result|cursor|row|_py_row|_py_processors|processors)\.py|sqlalchemy/sql/sqltypes\.py|sqlalchemy/cyextension/",
        None,
    ),
    (
        "SQLAlchemy",
        "SQLAlchemy: statement construction (select/where/values)",
        r"sqlalchemy/orm/attributes\.py",
        r"operate|__eq__|__clause_element__|comparator|_bulk_update_tuples|adapt_to_entity|expression|__html__",
    ),
    (
        "SQLAlchemy",
        "SQLAlchemy: ORM objects (rows to objects, identity map, attributes)",
        r"sqlalchemy/orm/(loading|strategies|identity|state|instrumentation|attributes|collections|base|mapper|decl_api|_orm_constructors|path_registry|interfaces)\.py",
        None,
    ),
    (
        "SQLAlchemy",
        "SQLAlchemy: statement construction (select/where/values)",
        r"sqlalchemy/sql/(selectable|elements|operators|default_comparator|coercions|functions|dml|annotation|expression|type_api|roles|lambdas|_selectable_constructors|_dml_constructors|_elements_constructors|schema)\.py|sqlalchemy/orm/(properties|relationships|util|query)\.py",
        None,
    ),
    (
        "SQLAlchemy",
        "SQLAlchemy: Core execution (execution context, parameters, asyncpg adapter)",
        r"sqlalchemy/(engine/(base|default|interfaces)|dialects/|connectors/)",
        None,
    ),
    (
        "SQLAlchemy",
        "SQLAlchemy: ORM session execute/get/scalars (orchestration)",
        r"sqlalchemy/(orm/session|ext/asyncio/session|ext/asyncio/result|ext/asyncio/scoping)\.py",
        None,
    ),
    # Keel's own column types run inside SQLAlchemy's result processing
    (
        "SQLAlchemy",
        "SQLAlchemy: result (cursor result, rows, type processors)",
        r"keel/models/",
        r"process_result_value|process_bind_param|result_processor|bind_processor",
    ),
    # --- Pydantic
    (
        "Pydantic",
        "Pydantic validation/serialisation (incl. FastAPI's ModelField)",
        r"^pydantic/|^pydantic_core/|^fastapi/_compat",
        None,
    ),
    # --- logging and metrics
    (
        "access log",
        "structlog access log (processors, redaction, JSON, write)",
        r"^structlog/|keel/core/logging\.py|^logging/",
        None,
    ),
    ("metrics", "prometheus metrics", r"^prometheus_client/|keel/core/metrics\.py", None),
    # --- Keel middleware (src/keel/core/middleware/*, the rate-limit headers)
    (
        "Keel middleware",
        "middleware: Observability (own code: request id, Server-Timing)",
        r"keel/core/middleware/observability\.py|keel/core/request_context\.py",
        None,
    ),
    (
        "Keel middleware",
        "middleware: SecurityHeaders",
        r"keel/core/middleware/security_headers\.py",
        None,
    ),
    (
        "Keel middleware",
        "middleware: Health (fast path check)",
        r"keel/core/middleware/health\.py",
        None,
    ),
    (
        "Keel middleware",
        "middleware: GZipWhenAccepted",
        r"keel/core/middleware/compression\.py|starlette/middleware/gzip\.py",
        None,
    ),
    ("Keel middleware", "middleware: BodyLimit", r"keel/core/middleware/body_limit\.py", None),
    (
        "Keel middleware",
        "middleware: RateLimitHeaders",
        r"keel/core/ratelimit\.py",
        r"RateLimitHeadersMiddleware",
    ),
    ("Keel middleware", "middleware: UnhandledError", r"keel/core/middleware/unhandled\.py", None),
    ("Keel middleware", "middleware: CORS", r"starlette/middleware/cors\.py", None),
    # --- Keel's auth dependency
    (
        "Keel auth",
        "auth: access token verify/issue (PyJWT, ES256)",
        r"keel/core/security/(access_tokens|keys)\.py|^jwt/|^cryptography/",
        None,
    ),
    ("Keel auth", "auth: revocation (ended-session) check", r"keel/auth/revocation\.py", None),
    (
        "Keel auth",
        "auth: dependency code (authenticate, _current_user, OAuth2 scheme)",
        r"keel/auth/(deps|permissions)\.py|^fastapi/security/",
        None,
    ),
    # --- rate limiter (token endpoint), passwords
    (
        "Keel endpoint",
        "rate limiter (limits, moving window in memory)",
        r"keel/core/ratelimit\.py|^limits/",
        None,
    ),
    (
        "Keel endpoint",
        "password hashing (argon2)",
        r"^argon2/|keel/core/security/passwords\.py",
        None,
    ),
    # --- Keel's own request-session dependency
    (
        "Keel db dependency",
        "Keel: request-session dependency (keel/core/db.py own code)",
        r"keel/core/db\.py",
        None,
    ),
    # --- Keel endpoint, service and repository code
    ("Keel endpoint", "Keel: endpoint/service/repository code", r"^keel/", None),
    # --- FastAPI / Starlette
    (
        "FastAPI",
        "FastAPI: threadpool hop (sync dependency or endpoint)",
        r"^anyio/to_thread\.py|starlette/concurrency\.py",
        None,
    ),
    (
        "FastAPI",
        "FastAPI: threadpool hop (sync dependency or endpoint)",
        r"^anyio/_backends/_asyncio\.py",
        r"run_sync_in_worker_thread|WorkerThread",
    ),
    (
        "FastAPI",
        "FastAPI: request body parsing",
        r"starlette/requests\.py",
        r"body|json|form|stream|_get_form",
    ),
    (
        "FastAPI",
        "FastAPI: request body parsing",
        r"starlette/formparsers\.py|^python_multipart/|^multipart/",
        None,
    ),
    (
        "FastAPI",
        "FastAPI: dependency resolution (solve_dependencies, generator deps)",
        r"^fastapi/dependencies/|^fastapi/concurrency\.py|^fastapi/params\.py",
        None,
    ),
    (
        "FastAPI",
        "FastAPI: response serialisation (serialize_response, jsonable_encoder)",
        r"^fastapi/encoders\.py",
        None,
    ),
    (
        "FastAPI",
        "FastAPI: response serialisation (serialize_response, jsonable_encoder)",
        r"^fastapi/routing\.py",
        r"serialize_response|_prepare_response_content|_build_response_args",
    ),
    (
        "FastAPI",
        "FastAPI/Starlette built-in middleware (errors, telemetry, body limit, exit stack)",
        r"starlette/middleware/(errors|exceptions)\.py|starlette/_exception_handler\.py|^fastapi/middleware/|^fastapi/telemetry/|^fastapi/_body_limit\.py",
        None,
    ),
    (
        "FastAPI",
        "Starlette Response / Request objects",
        r"starlette/(responses|requests)\.py|^fastapi/responses\.py",
        None,
    ),
    (
        "FastAPI",
        "FastAPI/Starlette: routing, route match, request handler",
        r"^fastapi/|^starlette/",
        None,
    ),
    # --- this measurement's own GC counter (bench/profile/gcstats)
    ("other", "gcstats callback (the measurement's own overhead)", r"sitecustomize\.py$", None),
    # --- the server and the loop
    (
        "uvicorn",
        "uvicorn + httptools (protocol: parse, send, keep-alive)",
        r"^uvicorn/|^httptools/|^h11/",
        None,
    ),
    (
        "event loop",
        "event loop: asyncio Python (tasks, futures, handles)",
        r"^asyncio/|^uvloop/",
        None,
    ),
]
_COMPILED = [
    (group, category, re.compile(file_re), re.compile(func_re) if func_re else None)
    for group, category, file_re, func_re in RULES
]

STALL = ("stall", "stall: one stack for >= N consecutive samples (full GC pause, or descheduled)")
NO_FRAME = (
    "other",
    "no Python frame (likely a greenlet switch: SQLAlchemy runs its sync code in greenlets)",
)
LOOP_C = ("event loop", "event loop: uvloop C code (libuv, transport writes, C protocol callbacks)")
GC_ROW = "garbage collection (gcstats; py-spy charges it to the rows above, or to stalls)"

_NOT_FRAMES = ("thread (", "process ")  # py-spy's --threads / --subprocesses pseudo-frames
_RAW_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_FILE_MARKERS = (
    "/site-packages/",
    "/dist-packages/",
    "/src/",
    "/lib/python3.11/",
    "/lib/python3.12/",
    "/lib/python3.13/",
)


def shorten(path: str) -> str:
    """`/x/.venv/lib/python3.11/site-packages/sqlalchemy/orm/session.py` becomes
    `sqlalchemy/orm/session.py`, as py-spy's raw output names it."""
    for marker in _FILE_MARKERS:
        index = path.rfind(marker)
        if index >= 0:
            return path[index + len(marker) :]
    return path


@dataclass
class Profile:
    # thread name → list of (stack, weight) in sampling order (raw: unordered)
    threads: dict[str, list[tuple[Stack, int]]]
    ordered: bool


def _load_speedscope(data: dict) -> Profile:
    frames = [
        (f["name"], shorten(f.get("file") or "?"), int(f.get("line") or 0))
        for f in data["shared"]["frames"]
    ]
    threads: dict[str, list[tuple[Stack, int]]] = {}
    for prof in data["profiles"]:
        match = re.search(r'"([^"]*)"', prof.get("name", ""))
        name = match.group(1) if match else prof.get("name", "?")
        samples = threads.setdefault(name, [])
        weights = prof.get("weights") or [1] * len(prof["samples"])
        unit = min(weights) if weights else 1
        for sample, weight in zip(prof["samples"], weights, strict=True):
            stack = tuple(frames[i] for i in sample if not frames[i][0].startswith(_NOT_FRAMES))
            samples.append((stack, max(1, round(weight / unit))))
    return Profile(threads, ordered=True)


def _load_raw(lines: Iterable[str]) -> Profile:
    threads: dict[str, list[tuple[Stack, int]]] = {}
    for text in lines:
        line = text.rstrip("\n")
        if not line:
            continue
        body, _, count = line.rpartition(" ")
        parts = body.split(";")
        name = "(all)"
        if parts and parts[0].startswith("process "):
            parts = parts[1:]
        if parts and parts[0].startswith("thread ("):
            name = parts[0].split(": ", 1)[1] if ": " in parts[0] else parts[0]
            parts = parts[1:]
        stack = []
        for part in parts:
            match = _RAW_FRAME.match(part)
            if match:
                stack.append((match["func"], match["file"], int(match["line"] or 0)))
            else:
                stack.append((part, "?", 0))
        threads.setdefault(name, []).append((tuple(stack), int(count)))
    return Profile(threads, ordered=False)


def load(paths: list[Path]) -> Profile:
    merged: dict[str, list[tuple[Stack, int]]] = {}
    ordered = True
    for path in paths:
        text = path.read_text()
        profile = (
            _load_speedscope(json.loads(text))
            if text.lstrip().startswith("{")
            else _load_raw(text.splitlines())
        )
        ordered = ordered and profile.ordered
        for name, samples in profile.threads.items():
            merged.setdefault(name, []).extend(samples)
    return Profile(merged, ordered)


def classify(stack: Stack) -> tuple[str, str]:
    if not stack:
        return NO_FRAME
    leaf_func, leaf_file, _ = stack[-1]
    if leaf_file == "asyncio/runners.py" and leaf_func == "Runner.run":
        return LOOP_C
    for func, file, _line in reversed(stack):
        for group, category, file_re, func_re in _COMPILED:
            if file_re.search(file) and (func_re is None or func_re.search(func)):
                return group, category
    leaf_file = stack[-1][1]
    package = leaf_file.split("/", 1)[0] if "/" in leaf_file else leaf_file.removesuffix(".py")
    return "other", f"other: {package}"


def stalls(samples: list[tuple[Stack, int]], min_run: int) -> list[bool]:
    """Flag each sample that belongs to a run of >= min_run identical consecutive stacks."""
    flags = [False] * len(samples)
    start = 0
    for index in range(1, len(samples) + 1):
        if index == len(samples) or samples[index][0] != samples[start][0]:
            if sum(w for _, w in samples[start:index]) >= min_run:
                for j in range(start, index):
                    flags[j] = True
            start = index
    return flags


def runs(samples: list[tuple[Stack, int]], flags: list[bool]) -> Iterator[tuple[int, Stack]]:
    index = 0
    while index < len(samples):
        if not flags[index]:
            index += 1
            continue
        end = index
        while (
            end + 1 < len(samples) and flags[end + 1] and samples[end + 1][0] == samples[index][0]
        ):
            end += 1
        yield sum(w for _, w in samples[index : end + 1]), samples[index][0]
        index = end + 1


def frame_label(frame: Frame, *, with_line: bool = False) -> str:
    func, file, line = frame
    return f"{func} ({file}:{line})" if with_line else f"{func} ({file})"


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0912, PLR0915 - one report
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--thread", default="MainThread", help="thread to break down")
    window = parser.add_argument_group("the profiled window (header facts)")
    window.add_argument("--seconds", type=float, help="the profile's window in seconds")
    window.add_argument("--requests", type=int, help="requests answered in the window")
    window.add_argument("--cpu-seconds", type=float, help="process user+system CPU seconds")
    window.add_argument("--loop-cpu-seconds", type=float, help="loop thread's on-CPU seconds")
    window.add_argument("--loop-wait-seconds", type=float, help="loop thread's runqueue seconds")
    window.add_argument("--gc-seconds", type=float, help="CPU seconds in garbage collection")
    window.add_argument("--gc-detail", default="", help="text shown beside the GC seconds")
    plain = parser.add_argument_group("the run without the profiler (the µs columns)")
    plain.add_argument("--plain-rps", type=float, help="requests per second")
    plain.add_argument("--plain-loop-cpu-us", type=float, help="loop thread CPU µs per request")
    plain.add_argument("--plain-gc-us", type=float, help="GC CPU µs per request")
    parser.add_argument("--stall-samples", type=int, default=10, help="shortest stall run")
    parser.add_argument("--top", type=int, default=15, help="top self-time functions to list")
    parser.add_argument("--title", default="", help="heading for the output")
    parser.add_argument(
        "--detail",
        action="append",
        default=[],
        metavar="TEXT",
        help="also list the top self-time functions of the categories whose name contains TEXT",
    )
    args = parser.parse_args(argv)

    profile = load(args.profiles)
    names = list(profile.threads)
    if args.thread in profile.threads:
        samples = profile.threads[args.thread]
    elif names == ["(all)"]:
        samples = profile.threads["(all)"]
    else:
        sys.stderr.write(f"no thread {args.thread!r} in the profile; threads: {names}\n")
        return 2

    flags = stalls(samples, args.stall_samples) if profile.ordered else [False] * len(samples)
    per_category: Counter[tuple[str, str]] = Counter()
    self_time: Counter[str] = Counter()
    detail: dict[str, Counter[str]] = {}
    for (stack, weight), stalled in zip(samples, flags, strict=True):
        if stalled:
            per_category[STALL] += weight
            continue
        group_category = classify(stack)
        per_category[group_category] += weight
        leaf = frame_label(stack[-1]) if stack else "(no Python frame)"
        self_time[leaf] += weight
        if any(text.lower() in group_category[1].lower() for text in args.detail):
            detail.setdefault(group_category[1], Counter())[leaf] += weight
    active = sum(per_category.values()) or 1
    code = (active - per_category[STALL]) or 1

    # µs per request of a category with n samples (stalls: none; see the docstring)
    if args.plain_rps:
        wall_pool = 1e6 / args.plain_rps
        cpu_pool = (
            args.plain_loop_cpu_us - (args.plain_gc_us or 0.0) if args.plain_loop_cpu_us else None
        )
        basis = "the run without the profiler"
    elif args.requests and args.seconds:
        wall_pool = args.seconds / args.requests * 1e6
        cpu_pool = (
            (args.loop_cpu_seconds - (args.gc_seconds or 0.0)) / args.requests * 1e6
            if args.loop_cpu_seconds
            else None
        )
        basis = "the profiled window"
    else:
        wall_pool = cpu_pool = None
        basis = ""

    def columns(n: int, *, stall: bool = False) -> str:
        share_code = "" if stall else f"{n / code:.1%}"
        wall = "" if stall or wall_pool is None else f"{n / code * wall_pool:,.0f}"
        cpu = "" if stall or cpu_pool is None else f"{n / code * cpu_pool:,.0f}"
        return f"{n:,} | {n / active:.1%} | {share_code} | {wall} | {cpu}"

    out = []
    if args.title:
        out.append(f"### {args.title}\n")
    facts = [f"{active:,} non-idle samples of thread {args.thread}"]
    if args.requests and args.seconds:
        facts.append(
            f"profiled window: {args.requests:,} requests in {args.seconds:.2f} s = "
            f"{args.requests / args.seconds:,.1f} req/s"
        )
    if args.loop_cpu_seconds is not None and args.loop_wait_seconds is not None and args.seconds:
        running = args.loop_cpu_seconds + args.loop_wait_seconds
        facts.append(
            f"loop thread on CPU {args.loop_cpu_seconds / args.seconds:.0%}, waiting for a CPU "
            f"{args.loop_wait_seconds / args.seconds:.0%}, not running (asleep, or stopped by "
            f"py-spy) {max(0.0, args.seconds - running) / args.seconds:.0%} of the window"
        )
    if args.requests and args.loop_cpu_seconds:
        per_request = args.loop_cpu_seconds / args.requests * 1e6
        facts.append(f"loop thread CPU {per_request:,.0f} µs per request")
    if args.requests and args.cpu_seconds:
        per_request = args.cpu_seconds / args.requests * 1e6
        facts.append(f"process CPU (all threads) {per_request:,.0f} µs per request")
    if args.gc_seconds is not None:
        gc_text = f"garbage collection {args.gc_seconds:.3f} CPU s"
        if args.loop_cpu_seconds:
            gc_text += f" = {args.gc_seconds / args.loop_cpu_seconds:.1%} of the loop thread's CPU"
        if args.gc_detail:
            gc_text += f" [{args.gc_detail}]"
        facts.append(gc_text)
    other_threads = {
        n: sum(w for _, w in s) for n, s in profile.threads.items() if n != args.thread
    }
    if other_threads:
        shown = ", ".join(f"{n} {c}" for n, c in list(other_threads.items())[:4])
        more = f" and {len(other_threads) - 4} more" if len(other_threads) > 4 else ""
        facts.append(
            f"other threads: {len(other_threads)} ({shown}{more} samples; "
            "mostly waiting, which py-spy does not always see)"
        )
    if not profile.ordered:
        facts.append("raw input: no stall detection")
    out.append("; ".join(facts) + ".\n")
    if basis:
        cpu_text = ""
        if cpu_pool is not None:
            cpu_text = (
                f"; CPU µs/req = that share x {cpu_pool:,.0f} µs, the loop thread's CPU per "
                "request less the garbage collector's (listed on its own)"
            )
        out.append(
            f"µs columns from {basis}: µs/req = share of samples without stalls x "
            f"{wall_pool:,.0f} µs (1 / throughput){cpu_text}.\n"
        )

    header = "| samples | % of samples | % without stalls | µs/req | CPU µs/req |"
    rule = "| ---: | ---: | ---: | ---: | ---: |"
    gc_us = args.plain_gc_us if args.plain_rps else None
    if gc_us is None and args.gc_seconds is not None and args.requests and not args.plain_rps:
        gc_us = args.gc_seconds / args.requests * 1e6
    groups: Counter[str] = Counter()
    for (group, _category), n in per_category.items():
        groups[group] += n
    out.append("| group " + header)
    out.append("| --- " + rule)
    for group, n in groups.most_common():
        out.append(f"| {group} | {columns(n, stall=group == STALL[0])} |")
    if gc_us is not None:
        out.append(f"| {GC_ROW} | | | | | {gc_us:,.0f} |")
    out.append("")
    out.append("| category | group " + header)
    out.append("| --- | --- " + rule)
    for (group, category), n in per_category.most_common():
        out.append(f"| {category} | {group} | {columns(n, stall=group == STALL[0])} |")
    if gc_us is not None:
        out.append(f"| {GC_ROW} | gc | | | | | {gc_us:,.0f} |")
    out.append("")
    out.append(f"Top {args.top} functions by self time (leaf frame; stalls left out):\n")
    out.append("| # | function (file) " + header)
    out.append("| ---: | --- " + rule)
    for rank, (label, n) in enumerate(self_time.most_common(args.top), 1):
        out.append(f"| {rank} | `{label}` | {columns(n)} |")
    for category, counter in detail.items():
        out.append("")
        out.append(f"Top self-time functions in '{category}':\n")
        for label, n in counter.most_common(args.top):
            out.append(f"- {n:,} ({n / code:.1%} without stalls) `{label}`")
    if profile.ordered:
        found = sorted(runs(samples, flags), key=lambda r: -r[0])
        if found:
            out.append("")
            out.append(
                f"Stalls ({len(found)} runs of >= {args.stall_samples} identical samples; "
                "the longest, with the line they were charged to):\n"
            )
            for n, stack in found[:6]:
                tail = " ← ".join(frame_label(f, with_line=True) for f in reversed(stack[-3:]))
                out.append(f"- {n} samples: {tail}")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
