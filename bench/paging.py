"""Paging benchmark: does page 5,000 of `GET /api/v1/items` cost what page 1 costs?

What it measures: a real `keel serve --workers 1` against a throwaway PostgreSQL database
of 250,000 items (three quarters owned by one user, the rest by another, but 1 in 1,000 by
a third; an admin reads them all). For each case (admin and user; the default sort
`-created_at` and `sort=title`; `limit=20`) it walks the cursors once from page 1 to page
5,000 (5,000 requests; it checks that no item repeats and that page 5,000 starts at the row
SQL's OFFSET 99,980 names), then times page 1 and page 5,000 alternately: 20 warm-up pairs,
then 200 measured pairs (the order inside each pair alternates). Reported: median and p95
of the client's round trip and of the server's own time (the `Server-Timing: app;dur=`
header: the whole request inside the app, token check, query and JSON), and page 5,000
over page 1 of the medians.
Target (issue: paging): page 5,000 at most 1.5 times page 1.

It also times page 1 with the list filters (`tag=a`, common; `tag=rare`, 1 item in 1,001;
`q=...`, a title substring, which no index serves) as the admin, the user and the owner of
few items, and records PostgreSQL's plans, with EXPLAIN (ANALYZE, BUFFERS), of the exact SQL
the app sends (prepared, as asyncpg prepares it), each as the custom plan (the first five
executions) and the generic plan (which PostgreSQL may switch a prepared statement to
afterwards). docs/items-query-plans.md keeps a reading of them.

Run from anywhere (paths are relative to this file), with PostgreSQL on 127.0.0.1:5432
(`BENCH_PG_SERVER` to change) and Keel's `.venv`; about 3 minutes:

    .venv/bin/python bench/paging.py
    .venv/bin/python bench/paging.py --rows 500000 --cases admin:-created_at --repeat 500

It makes the database `keel_bench_paging` (dropped at the end, even on failure or Ctrl-C,
unless `--keep-db`), writes results.json, walk.csv, plans.md and the server log to
`bench/out/paging-<UTC time>/` and prints a Markdown summary for bench/RESULTS.md.
Exit status 1 when a walk went wrong or a ratio is above the target.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx
from keel_bench import (
    API,
    KEEL,
    REPO,
    Database,
    KeelServer,
    create_user,
    insert_items,
    keel,
    keel_env,
    load_average,
    machine_line,
    median,
    out,
    out_dir,
    percentile,
    psql,
    say,
    sign_in,
)

ADMIN = "admin@bench.example"
USER = "user@bench.example"
OTHER = "other@bench.example"
FEW = "few@bench.example"  # 1 item in 1,000: where the owner's own indexes pay
TARGET_RATIO = 1.5
# (label, account, query) of page 1 in the default sort, timed round-robin.
FILTERS: list[tuple[str, str, dict[str, str]]] = [
    ("admin, no filter", ADMIN, {}),
    ("admin, tag=a (2 items in 5)", ADMIN, {"tag": "a"}),
    ("admin, tag=rare (1 item in 1,001)", ADMIN, {"tag": "rare"}),
    ("admin, q=abc (title contains, ~1 in 500)", ADMIN, {"q": "abc"}),
    ("admin, q=no-such-title (matches nothing)", ADMIN, {"q": "no-such-title"}),
    ("user, no filter", USER, {}),
    ("user, tag=rare", USER, {"tag": "rare"}),
    ("few (owns 1 in 1,000), no filter", FEW, {}),
    ("few (owns 1 in 1,000), sort=title", FEW, {"sort": "title"}),
]
SERVER_TIMING = re.compile(r"app;dur=([0-9.]+)")

# The SQL the app sends (SQLAlchemy, asyncpg dialect; seen with KEEL_DATABASE_ECHO=true).
_COLUMNS = (
    "items.owner_id, items.title, items.description, items.status, items.tags, "
    "items.version, items.id, items.created_at, items.updated_at, "
    "items.{key} AS keel_page_key, items.id AS keel_page_id"
)
_KEY_TYPES = {"created_at": "TIMESTAMP WITH TIME ZONE", "title": "VARCHAR"}


@dataclass(frozen=True)
class Case:
    who: str  # "admin" or "user"
    sort: str  # as the client writes it: "-created_at", "title"

    @property
    def name(self) -> str:
        return f"{self.who} sort={self.sort}"

    @property
    def key(self) -> str:
        return self.sort.lstrip("-")

    @property
    def descending(self) -> bool:
        return self.sort.startswith("-")


@dataclass
class Timing:
    client_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        return {
            "client_median": median(self.client_ms),
            "client_p95": percentile(self.client_ms, 0.95),
            "server_median": median(self.server_ms),
            "server_p95": percentile(self.server_ms, 0.95),
            "n": len(self.client_ms),
        }


class Api:
    """GET /api/v1/items as one account, signing in again if the token has expired."""

    def __init__(self, client: httpx.Client, email: str) -> None:
        self.client = client
        self.email = email
        self.token = sign_in(client, email)

    def items(self, params: dict[str, str]) -> tuple[dict[str, Any], float, float]:
        """(body, client ms, server ms) of one page."""
        for _attempt in range(2):
            started = time.perf_counter()
            answer = self.client.get(
                f"{API}/items",
                params=params,
                headers={"Authorization": f"Bearer {self.token}", "Accept-Encoding": "identity"},
            )
            client_ms = (time.perf_counter() - started) * 1000
            if answer.status_code == 401:
                self.token = sign_in(self.client, self.email)
                continue
            answer.raise_for_status()
            found = SERVER_TIMING.search(answer.headers.get("server-timing", ""))
            server_ms = float(found.group(1)) if found else float("nan")
            return answer.json(), client_ms, server_ms
        raise RuntimeError(f"{self.email}: still 401 after signing in again")


def _params(case: Case, limit: int, cursor: str | None = None) -> dict[str, str]:
    params = {"limit": str(limit)}
    if case.sort != "-created_at":  # the default: sent as a client would, without it
        params["sort"] = case.sort
    if cursor is not None:
        params["cursor"] = cursor
    return params


def _order_sql(case: Case) -> str:
    direction = "DESC" if case.descending else "ASC"
    return f"ORDER BY items.{case.key} {direction}, items.id {direction}"


def _expected_first_id(database: Database, case: Case, offset: int, user_id: str) -> str:
    where = f"WHERE owner_id = '{user_id}'" if case.who == "user" else ""
    sql = f"SELECT id FROM items {where} {_order_sql(case)} OFFSET {offset} LIMIT 1;"  # noqa: S608
    return psql(database.name, sql).strip()


@dataclass
class Walk:
    deep_cursor: str  # fetches page `pages`
    last_row_before: dict[str, Any]  # the last item of page `pages` - 1 (the cursor's key)
    deep_first_id: str
    seconds: float
    client_ms: list[float]
    server_ms: list[float]


def walk(api: Api, case: Case, pages: int, limit: int) -> Walk:
    """Follow next_cursor from page 1 to page `pages`; check no item repeats."""
    seen: set[str] = set()
    cursor: str | None = None
    deep_cursor = ""
    last_row: dict[str, Any] = {}
    client_ms, server_ms = [], []
    started = time.perf_counter()
    body: dict[str, Any] = {}
    for page in range(1, pages + 1):
        if page == pages:
            deep_cursor = cursor or ""
            last_row = body["data"][-1] if body else {}
        body, c_ms, s_ms = api.items(_params(case, limit, cursor))
        client_ms.append(c_ms)
        server_ms.append(s_ms)
        ids = [row["id"] for row in body["data"]]
        if len(ids) != limit or seen.intersection(ids):
            raise RuntimeError(f"{case.name}: page {page} has {len(ids)} rows or repeats")
        seen.update(ids)
        cursor = body["next_cursor"]
        if cursor is None and page < pages:
            raise RuntimeError(f"{case.name}: no next_cursor after page {page}")
    return Walk(
        deep_cursor=deep_cursor,
        last_row_before=last_row,
        deep_first_id=body["data"][0]["id"],
        seconds=time.perf_counter() - started,
        client_ms=client_ms,
        server_ms=server_ms,
    )


def time_pages(
    api: Api, case: Case, limit: int, deep_cursor: str, repeat: int, warmup: int
) -> tuple[Timing, Timing]:
    """Page 1 and the deep page alternately; warm-up pairs are thrown away."""
    first, deep = Timing(), Timing()
    requests = [(first, _params(case, limit)), (deep, _params(case, limit, deep_cursor))]
    for pair in range(warmup + repeat):
        for timing, params in requests if pair % 2 == 0 else requests[::-1]:
            _body, c_ms, s_ms = api.items(params)
            if pair >= warmup:
                timing.client_ms.append(c_ms)
                timing.server_ms.append(s_ms)
    return first, deep


def time_filters(client: httpx.Client, limit: int, repeat: int, warmup: int) -> dict[str, Timing]:
    """Page 1 of each FILTERS entry, round-robin; the warm-up turns (more than five, so
    PostgreSQL has made its custom-or-generic choice for each statement) are not kept."""
    apis = {email: Api(client, email) for email in {email for _, email, _ in FILTERS}}
    timings = {name: Timing() for name, _, _ in FILTERS}
    for turn in range(warmup + repeat):
        for name, email, extra in FILTERS:
            _body, c_ms, s_ms = apis[email].items({"limit": str(limit), **extra})
            if turn >= warmup:
                timings[name].client_ms.append(c_ms)
                timings[name].server_ms.append(s_ms)
    return timings


# ---------------------------------------------------------------- plans


@dataclass
class PlanCase:
    title: str
    sql: str
    params: list[str]  # SQL literals for EXECUTE


def _page_sql(case: Case, *, owner: bool, cursor: bool, extra: str = "") -> str:
    """The page query as the app writes it: visibility, filters, then the cursor."""
    conditions: list[str] = []
    n = 0

    def param(cast: str) -> str:
        nonlocal n
        n += 1
        return f"${n}::{cast}"

    if owner:
        conditions.append(f"items.owner_id = {param('UUID')}")
    if extra == "tag":
        conditions.append(f"items.tags @> jsonb_build_array({param('VARCHAR')})")
    if extra == "q":
        conditions.append(f"items.title ILIKE {param('VARCHAR')} ESCAPE '\\'")
    if cursor:
        op = "<" if case.descending else ">"
        key_param = param(_KEY_TYPES[case.key])
        id_param = param("UUID")
        conditions.append(f"(items.{case.key}, items.id) {op} ({key_param}, {id_param})")
    where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
    columns = _COLUMNS.format(key=case.key)
    return f"SELECT {columns} FROM items {where}{_order_sql(case)} LIMIT {param('INTEGER')}"  # noqa: S608


def _literal(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def plan_cases(
    walks: dict[Case, Walk], pages: int, limit: int, user_id: str, few_id: str
) -> list[PlanCase]:
    plans: list[PlanCase] = []
    lim = str(limit + 1)
    user = _literal(user_id)
    for case, done in walks.items():
        owner = case.who == "user"
        head = [user] if owner else []
        plans.append(
            PlanCase(
                f"{case.name}, page 1", _page_sql(case, owner=owner, cursor=False), [*head, lim]
            )
        )
        row = done.last_row_before
        cursor = [_literal(row[case.key]), _literal(row["id"])]
        plans.append(
            PlanCase(
                f"{case.name}, page {pages:,} (after {(pages - 1) * limit:,} rows)",
                _page_sql(case, owner=owner, cursor=True),
                [*head, *cursor, lim],
            )
        )
    default_admin = Case("admin", "-created_at")
    default_user = Case("user", "-created_at")
    tag_sql = _page_sql(default_admin, owner=False, cursor=False, extra="tag")
    q_sql = _page_sql(default_admin, owner=False, cursor=False, extra="q")
    plans.extend(
        PlanCase(f"admin tag={tag}, page 1", tag_sql, [_literal(tag), lim]) for tag in ("a", "rare")
    )
    plans.append(
        PlanCase(
            "user tag=rare, page 1",
            _page_sql(default_user, owner=True, cursor=False, extra="tag"),
            [user, _literal("rare"), lim],
        )
    )
    plans.extend(
        PlanCase(f"admin q={text}, page 1", q_sql, [_literal(f"%{text}%"), lim])
        for text in ("abc", "no-such-title")
    )
    # A user owning 1 item in 1,000: the plans the owner's indexes are for.
    plans.extend(
        PlanCase(
            f"user with few items (1 in 1,000) sort={case.sort}, page 1",
            _page_sql(case, owner=True, cursor=False),
            [_literal(few_id), lim],
        )
        for case in (default_user, Case("user", "title"))
    )
    return plans


def explain(database: Database, plan: PlanCase) -> dict[str, str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the prepared statement, custom and generic plan,
    each after one unmeasured execution (so the buffers read are the warm ones)."""
    args = ", ".join(plan.params)
    found: dict[str, str] = {}
    for mode in ("force_custom_plan", "force_generic_plan"):
        script = (
            f"SET plan_cache_mode = {mode};\n"
            f"PREPARE page AS {plan.sql};\n"
            "\\o /dev/null\n"
            f"EXECUTE page({args});\n"
            "\\o\n"
            f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE page({args});\n"
        )
        found[mode.split("_")[1]] = psql(database.name, script).rstrip()
    return found


# ---------------------------------------------------------------- report


def _fmt(ms: float) -> str:
    return f"{ms:.2f}"


def _write_raw(
    folder: Path,
    results: dict[str, Any],
    walks: dict[Case, Walk],
    timings: dict[Case, tuple[Timing, Timing]],
    explained: list[tuple[PlanCase, dict[str, str]]],
) -> None:
    """walk.csv (every page of every walk), plans.md and results.json."""
    with (folder / "walk.csv").open("w") as walk_file:
        walk_file.write("case,page,client_ms,server_ms\n")
        for case, done in walks.items():
            pairs = zip(done.client_ms, done.server_ms, strict=True)
            for page, (c_ms, s_ms) in enumerate(pairs, start=1):
                walk_file.write(f"{case.name},{page},{c_ms:.3f},{s_ms:.1f}\n")
    with (folder / "plans.md").open("w") as plan_file:
        for plan, found in explained:
            params = ", ".join(plan.params)
            plan_file.write(
                f"### {plan.title}\n\n```sql\n{plan.sql}\n-- EXECUTE ({params})\n```\n\n"
            )
            for mode, text in found.items():
                plan_file.write(f"{mode} plan:\n\n```\n{text}\n```\n\n")
    results["cases"] = {
        case.name: {
            "page1": timings[case][0].summary(),
            "deep": timings[case][1].summary(),
            "walk_seconds": walks[case].seconds,
            "walk_server_median_first_100": median(walks[case].server_ms[:100]),
            "walk_server_median_last_100": median(walks[case].server_ms[-100:]),
        }
        for case in walks
    }
    results["plans"] = [{**asdict(plan), **found} for plan, found in explained]
    (folder / "results.json").write_text(json.dumps(results, indent=2))


def _report(
    args: argparse.Namespace,
    header: str,
    walks: dict[Case, Walk],
    timings: dict[Case, tuple[Timing, Timing]],
    filters: dict[str, Timing],
    explained: list[tuple[PlanCase, dict[str, str]]],
) -> int:
    """The Markdown summary on stdout; 1 when a server-side ratio misses the target."""
    user_rows = args.rows * 3 // 4
    out(f"# {header}")
    out(f"# server: {KEEL.relative_to(REPO)} serve --workers 1 (KEEL_LOG_FORMAT=json)")
    out(
        f"# {args.rows:,} items (user {user_rows:,}, other and few the rest); "
        f"limit {args.limit}; deep page {args.pages:,}; {args.repeat} measured pairs after "
        f"{args.warmup} warm-up pairs; times in ms"
    )
    out()
    out(
        f"| case | page 1 median | page 1 p95 | page {args.pages:,} median | "
        f"page {args.pages:,} p95 | **ratio of medians** | result |"
    )
    out("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    failed = False
    for case in walks:
        first, deep = (t.summary() for t in timings[case])
        for side in ("server", "client"):
            ratio = deep[f"{side}_median"] / first[f"{side}_median"]
            verdict = "ok" if ratio <= TARGET_RATIO else f"over {TARGET_RATIO}x"
            failed = failed or (side == "server" and ratio > TARGET_RATIO)
            out(
                f"| {case.name} ({side}) | {_fmt(first[f'{side}_median'])} | "
                f"{_fmt(first[f'{side}_p95'])} | {_fmt(deep[f'{side}_median'])} | "
                f"{_fmt(deep[f'{side}_p95'])} | **{ratio:.2f}** | {verdict} |"
            )
    out()
    out("Walk (one pass): server median of pages 1-100 vs the last 100; whole walk")
    for case, done in walks.items():
        out(
            f"- {case.name}: {median(done.server_ms[:100]):.2f} vs "
            f"{median(done.server_ms[-100:]):.2f} ms; {args.pages:,} pages in "
            f"{done.seconds:.1f} s"
        )
    out()
    out(f"Filters, page 1 ({args.filter_repeat} each, round-robin, after 10 warm-up turns):")
    out()
    out("| account, filter | server median | server p95 | client median | client p95 |")
    out("| --- | ---: | ---: | ---: | ---: |")
    for name, timing in filters.items():
        got = timing.summary()
        out(
            f"| {name} | {_fmt(got['server_median'])} | {_fmt(got['server_p95'])} | "
            f"{_fmt(got['client_median'])} | {_fmt(got['client_p95'])} |"
        )
    out()
    out("Plans (EXPLAIN ANALYZE execution time in ms and first plan node: custom / generic):")
    for plan, found in explained:
        times = []
        for mode in ("custom", "generic"):
            hit = re.search(r"Execution Time: ([0-9.]+) ms", found[mode])
            node = next((ln.strip() for ln in found[mode].splitlines() if "->" in ln), "")
            times.append(f"{hit.group(1) if hit else '?'} ({node.lstrip('-> ').split('  (')[0]})")
        out(f"- {plan.title}: {' / '.join(times)}")
    return 1 if failed else 0


def _terminate(_signum: int, _frame: object) -> NoReturn:
    raise SystemExit(143)  # unwinds through the context managers: server, database


def _cases(text: str) -> list[Case]:
    cases = []
    for part in text.split(","):
        who, _, sort = part.strip().partition(":")
        if who not in {"admin", "user"} or sort not in {"-created_at", "title"}:
            raise argparse.ArgumentTypeError("cases are admin|user:-created_at|title, ...")
        cases.append(Case(who, sort))
    return cases


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=250_000, help="items in the table")
    parser.add_argument("--pages", type=int, default=5_000, help="the deep page's number")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=200, help="measured pairs per case")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured pairs per case")
    parser.add_argument("--filter-repeat", type=int, default=100)
    parser.add_argument(
        "--cases",
        type=_cases,
        default=_cases("admin:-created_at,admin:title,user:-created_at,user:title"),
    )
    parser.add_argument("--db", default="keel_bench_paging", help="database to make and drop")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    args = parser.parse_args()
    user_rows = args.rows * 3 // 4
    needed = args.pages * args.limit
    if user_rows < needed:
        parser.error(
            f"--rows gives the user {user_rows:,} items; page {args.pages:,} "
            f"at limit {args.limit} needs {needed:,}"
        )
    return args


def main() -> int:
    args = _arguments()
    signal.signal(signal.SIGTERM, _terminate)

    folder = out_dir("paging")
    header = machine_line()
    load_before = load_average()
    say(header)
    say(load_before)
    say(f"raw figures in {folder.relative_to(REPO)}")
    results: dict[str, Any] = {
        "machine": header,
        "args": {k: v for k, v in vars(args).items() if k != "cases"},
    }
    walks: dict[Case, Walk] = {}
    timings: dict[Case, tuple[Timing, Timing]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="keel-bench-paging-") as tmp,
        Database(args.db, keep=args.keep_db) as database,
    ):
        env = keel_env(database, Path(tmp))
        keel(env, "db", "upgrade")
        create_user(env, ADMIN, admin=True)
        user_id = create_user(env, USER)
        other_id = create_user(env, OTHER)
        few_id = create_user(env, FEW)
        owners = [other_id, user_id, user_id, user_id]
        seconds = insert_items(database, 1, args.rows, owners, few_owner=few_id)
        results["load_seconds"] = seconds
        say(f"loaded {args.rows:,} items in {seconds:.1f} s")

        with (
            KeelServer(env, folder / "server.log") as server,
            httpx.Client(base_url=server.base_url, timeout=30.0) as client,
        ):
            for case in args.cases:
                api = Api(client, ADMIN if case.who == "admin" else USER)
                done = walk(api, case, args.pages, args.limit)
                offset = (args.pages - 1) * args.limit
                expected = _expected_first_id(database, case, offset, user_id)
                if done.deep_first_id != expected:
                    raise RuntimeError(
                        f"{case.name}: page {args.pages} starts at {done.deep_first_id}, "
                        f"OFFSET {offset} is {expected}"
                    )
                walks[case] = done
                say(
                    f"{case.name}: walked {args.pages:,} pages in {done.seconds:.1f} s "
                    f"(page {args.pages:,} starts at OFFSET {offset:,}'s row, as it should)"
                )
                timings[case] = time_pages(
                    api, case, args.limit, done.deep_cursor, args.repeat, args.warmup
                )
                first, deep = (t.summary() for t in timings[case])
                say(
                    f"{case.name}: page 1 {first['server_median']:.2f} ms, page "
                    f"{args.pages:,} {deep['server_median']:.2f} ms (server medians)"
                )
            filters = time_filters(client, args.limit, args.filter_repeat, 10)
        say("explaining the queries")
        plans = plan_cases(walks, args.pages, args.limit, user_id, few_id)
        explained = [(plan, explain(database, plan)) for plan in plans]

    results["filters"] = {name: timing.summary() for name, timing in filters.items()}
    _write_raw(folder, results, walks, timings, explained)
    header += f"\n# {load_before} at the start, {load_average()} at the end"
    return _report(args, header, walks, timings, filters, explained)


if __name__ == "__main__":
    sys.exit(main())
