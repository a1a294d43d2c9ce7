#!/usr/bin/env bash
# Keel's benchmark harness: measures Keel and the shared baseline with wrk in the same run
# and prints each Keel figure as a ratio to the baseline's.
#
#   bash bench/run.sh                 # every scenario, ROUNDS rounds (see bench/README.md)
#   SCENARIOS="health" bash bench/run.sh
#
# It sources the baseline's run_baseline.sh with BENCH_LIB_ONLY=1 and uses its helpers
# (start_server, wrk_measure, wait_idle, print_versions, ...), so both sides are measured
# by the same code with the same wrk settings. Each round measures, for every scenario,
# the baseline first and Keel second; the reported ratio is the median over the rounds.
#
# Env (defaults):
#   KEEL_BASELINE_DIR=<repo>/../shared/bench   where run_baseline.sh lives
#   ROUNDS=3          alternating rounds (baseline, then Keel, per scenario)
#   SCENARIOS=<all>   space-separated subset of: health item
#   PORT=8001         the baseline's port      KEEL_PORT=8002   Keel's port
#   THREADS=1 CONNS=32 DURATION=10s WARMUP=3s WRK_TIMEOUT=2s   (passed to the baseline's helpers)
#   PY=<python>       the baseline's python (default: a venv in BENCH_VENV=/tmp/keel-baseline-venv)
#   BENCH_DSN=postgresql://postgres@127.0.0.1:5432/bench   (the baseline's database)
#   KEEL_BENCH_DB=keel_bench_run   Keel's throwaway database on the same server: made,
#                     migrated with `keel db upgrade`, dropped at the end however the run ends
#   BENCH_OUT=<repo>/bench/out/<timestamp>   where results.tsv and summary.txt are written
#   BENCH_KEEP_LOGS=1  keep Keel's server log (in a temp dir, path printed) after the run
#   BENCH_STRICT=1     exit 1 when a scenario's median ratio is below its target
# Only 127.0.0.1 is ever targeted; every wrk run is bounded by DURATION (or WARMUP).

set -u
set -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KEEL_BASELINE_DIR="${KEEL_BASELINE_DIR:-$REPO/../shared/bench}"
ROUNDS="${ROUNDS:-3}"
KEEL_PORT="${KEEL_PORT:-8002}"
BENCH_STRICT="${BENCH_STRICT:-}"
BENCH_KEEP_LOGS="${BENCH_KEEP_LOGS:-}"
KEEL_BENCH_DB="${KEEL_BENCH_DB:-keel_bench_run}"

say() { echo "bench: $*" >&2; }
die() { say "error: $*"; exit 2; }

# ---------------------------------------------------------------- scenarios
# A scenario is a function `scenario_<name>` run once per round. It calls
# measure_pair, which measures one baseline endpoint and then one Keel endpoint, and
# records the pair under the scenario's name with its target ratio (Keel req/s over
# baseline req/s). Add a scenario: write its function and append its name to ALL_SCENARIOS.
#
# measure_pair NAME TARGET BASELINE_APP BASELINE_PATH KEEL_PATH [extra wrk args...]
#   TARGET is a ratio, or "-" when no target has been set (the figure is only reported).
#   BASELINE_APP is a module in KEEL_BASELINE_DIR (raw_starlette, fastapi_hello); the
#   extra wrk args (e.g. -s script.lua, -H 'Authorization: ...') are given to both runs.

ALL_SCENARIOS=(health item)

# /health (pre-encoded body, the whole middleware stack) against the floor: raw
# Starlette answering a constant JSON body.
scenario_health() {
  measure_pair health 0.7 raw_starlette /json /health
}

# GET /api/v1/items/{id} (bearer token checked, one SELECT through SQLAlchemy, the item as
# JSON with its ETag) against raw Starlette's GET /user/{id} (one primary-key SELECT
# through an asyncpg pool, the row as JSON). Both read one fixed row, so both are served
# from PostgreSQL's cache: the baseline /user/1 of its 10,000 users, Keel one item of
# 10,000 owned by the signed-in user. No target has been set: the ratio is reported.
ITEM_ID=""
ITEM_TOKEN=""
ITEM_TOKEN_AT=0
ITEM_EMAIL="item-reader@bench.example"
ITEM_PASSWORD="bench passphrase 2026"  # a throwaway account in a throwaway database
ITEM_TOKEN_MAX_AGE=600  # access tokens last 900 s: a fresh one for a round after 10 minutes
scenario_item() {
  ensure_keel
  [ -n "$ITEM_ID" ] || prepare_item
  if [ $(($(date +%s) - ITEM_TOKEN_AT)) -ge "$ITEM_TOKEN_MAX_AGE" ]; then
    keel_sign_in "$ITEM_EMAIL" || die "could not sign $ITEM_EMAIL in"
  fi
  measure_pair item - raw_starlette /user/1 "/api/v1/items/$ITEM_ID" \
    -H "Authorization: Bearer $ITEM_TOKEN"
}

# keel_sign_in EMAIL: a fresh access token in ITEM_TOKEN (the password grant).
keel_sign_in() {
  local answer
  answer="$(curl -s --max-time 30 -X POST "http://127.0.0.1:$KEEL_PORT/api/v1/auth/token" \
    --data-urlencode grant_type=password --data-urlencode "username=$1" \
    --data-urlencode "password=$ITEM_PASSWORD")" || return 1
  ITEM_TOKEN="$(json_field access_token <<<"$answer")" || { say "sign-in answered: $answer"; return 1; }
  ITEM_TOKEN_AT="$(date +%s)"
}

# json_field NAME: the top-level field NAME of the JSON object on stdin.
json_field() {
  python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1" 2>/dev/null
}

# prepare_item: a user (keel users create), a token, one item made through the API and
# 9,999 more of the same user's inserted with SQL (a table the size of the baseline's).
prepare_item() {
  local answer owner filler
  KEEL_BENCH_PASSWORD="$ITEM_PASSWORD" keel_cli users create "$ITEM_EMAIL" \
    --password-env KEEL_BENCH_PASSWORD >>"$KEEL_LOG" 2>&1 || die "keel users create failed"
  keel_sign_in "$ITEM_EMAIL" || die "could not sign $ITEM_EMAIL in"
  answer="$(curl -s --max-time 30 -X POST "http://127.0.0.1:$KEEL_PORT/api/v1/items" \
    -H "Authorization: Bearer $ITEM_TOKEN" -H 'Content-Type: application/json' \
    -d '{"title": "Benchmark item", "description": "Read by bench/run.sh", "status": "active", "tags": ["a", "b"]}')"
  ITEM_ID="$(json_field id <<<"$answer")" || die "could not create an item: $answer"
  owner="$(json_field owner_id <<<"$answer")" || die "no owner_id in: $answer"
  [[ "$ITEM_ID" =~ ^[0-9a-f-]{36}$ && "$owner" =~ ^[0-9a-f-]{36}$ ]] || die "odd item: $answer"
  filler="INSERT INTO items (id, owner_id, title, description, status, tags, version, created_at, updated_at)
    SELECT gen_random_uuid(), '$owner', 'Item ' || i, 'Filler item ' || i, 'active', '[\"a\"]'::jsonb,
           1, now() - i * interval '1 second', now() - i * interval '1 second'
    FROM generate_series(1, 9999) AS i"
  psql -q -X -v ON_ERROR_STOP=1 "$KEEL_DSN" -c "$filler" -c 'VACUUM ANALYZE items' >/dev/null ||
    die "could not insert the other items"
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $ITEM_TOKEN" \
    "http://127.0.0.1:$KEEL_PORT/api/v1/items/$ITEM_ID")" = 200 ] ||
    die "GET /api/v1/items/$ITEM_ID does not answer 200"
  say "item scenario: $ITEM_EMAIL reads item $ITEM_ID (10,000 items in $KEEL_BENCH_DB)"
}

# ---------------------------------------------------------------- preflight
[ -f "$KEEL_BASELINE_DIR/run_baseline.sh" ] ||
  die "no baseline at $KEEL_BASELINE_DIR (set KEEL_BASELINE_DIR to the folder holding run_baseline.sh)"
KEEL_BASELINE_DIR="$(cd "$KEEL_BASELINE_DIR" && pwd)"

if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "wrk is missing: installing it with apt-get"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } ||
      die "could not install wrk with apt-get"
  else
    die "wrk is not installed: install it (Debian/Ubuntu: sudo apt-get install wrk) and run again"
  fi
fi
for tool in curl psql python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done

[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
# Only names with this prefix are ever made or dropped, so a typo cannot drop another.
[[ "$KEEL_BENCH_DB" =~ ^keel_bench_[a-z0-9_]+$ ]] ||
  die "KEEL_BENCH_DB must be keel_bench_ followed by [a-z0-9_]"

if [ ! -x "$REPO/.venv/bin/keel" ]; then
  say "no .venv yet: setting it up with run.py (pinned uv, uv.lock)"
  (cd "$REPO" && python3 run.py keel --help >/dev/null) || die "could not set up $REPO/.venv"
  [ -x "$REPO/.venv/bin/keel" ] || die "$REPO/.venv/bin/keel is still missing"
fi

if [ -z "${PY:-}" ] && [ ! -x "${BENCH_VENV:-/tmp/keel-baseline-venv}/bin/python" ]; then
  say "building the baseline's environment in ${BENCH_VENV:-/tmp/keel-baseline-venv} (first run only)"
fi
# shellcheck source=/dev/null
BENCH_LIB_ONLY=1 source "$KEEL_BASELINE_DIR/run_baseline.sh" ||
  die "could not load $KEEL_BASELINE_DIR/run_baseline.sh"
set +e  # the helpers return non-zero in ordinary cases; failures are checked by hand

# The bench database, made and seeded as run_baseline.sh's own main section does.
if ! psql "$BENCH_DSN" -Atc 'select count(*) from users' >/dev/null 2>&1; then
  say "making and seeding the bench database ($BENCH_DSN)"
  psql "${BENCH_DSN%/*}/postgres" -Atc 'create database bench' >/dev/null 2>&1
  PGOPTIONS='-c client_min_messages=warning' psql -q "$BENCH_DSN" -f "$KEEL_BASELINE_DIR/seed.sql" >/dev/null ||
    die "cannot reach or seed $BENCH_DSN"
fi

TMP="$(mktemp -d /tmp/keel-bench.XXXXXX)"
KEEL_DATA="$TMP/data"
KEEL_LOG="$TMP/keel.log"
mkdir -p "$KEEL_DATA"
PG_SERVER="${BENCH_DSN%/*}"
KEEL_DSN="$PG_SERVER/$KEEL_BENCH_DB"
KEEL_DATABASE_URL="postgresql+asyncpg://${KEEL_DSN#postgresql://}"
KEEL_DB_MADE=""
BENCH_OUT="${BENCH_OUT:-$REPO/bench/out/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$BENCH_OUT" || die "cannot write to $BENCH_OUT"
RESULTS="$BENCH_OUT/results.tsv"
: >"$RESULTS"
PAIRS="$BENCH_OUT/pairs.tsv"  # scenario target baseline_app baseline_ep keel_ep, once each
: >"$PAIRS"

# ---------------------------------------------------------------- servers
BASE_PID=""
BASE_APP=""
KEEL_PID=""

port_busy() { curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/"; }

# Stop a server started in its own process group: the group, then the process.
stop_group() {
  local pid="$1" i
  [ -n "$pid" ] || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}

cleanup() {
  stop_group "$KEEL_PID"
  KEEL_PID=""
  SERVER_PID="$BASE_PID"
  stop_server
  BASE_PID=""
  if [ -n "$KEEL_DB_MADE" ]; then
    if pg_admin "DROP DATABASE IF EXISTS $KEEL_BENCH_DB WITH (FORCE)" 2>/dev/null; then
      say "dropped database $KEEL_BENCH_DB"
    else
      say "could not drop $KEEL_BENCH_DB: psql $PG_SERVER/postgres -c 'DROP DATABASE $KEEL_BENCH_DB'"
    fi
    KEEL_DB_MADE=""
  fi
  if [ -n "$BENCH_KEEP_LOGS" ]; then
    say "Keel's log kept in $KEEL_LOG"
  else
    rm -rf "$TMP"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ensure_baseline APP: the baseline app APP serving on PORT (restarts if another app is up).
ensure_baseline() {
  local app="$1"
  if [ -n "$BASE_PID" ] && [ "$BASE_APP" = "$app" ] && kill -0 "$BASE_PID" 2>/dev/null; then
    return 0
  fi
  if [ -n "$BASE_PID" ]; then SERVER_PID="$BASE_PID"; stop_server; BASE_PID=""; fi
  port_busy "$PORT" && die "port $PORT is already in use (set PORT)"
  # The baseline apps answer /json once their pool is open.
  start_server "$app:app" /json || { BASE_PID="$SERVER_PID"; die "baseline $app did not start"; }
  BASE_PID="$SERVER_PID"
  BASE_APP="$app"
}

# keel_cli ARGS...: the keel command with the settings `keel serve` gets below.
keel_cli() {
  (
    cd "$REPO" &&
      KEEL_DATABASE_URL="$KEEL_DATABASE_URL" KEEL_DATA_DIR="$KEEL_DATA" KEEL_LOG_FORMAT=json \
        exec "$REPO/.venv/bin/keel" "$@"
  ) </dev/null
}

# pg_admin SQL: one statement in the server's postgres database (notices left out).
pg_admin() {
  PGOPTIONS="-c client_min_messages=warning" psql -q -X "$PG_SERVER/postgres" -c "$1" >/dev/null
}

# Keel's database: made empty (dropped first if a run left it), migrated, dropped at exit.
prepare_keel_db() {
  pg_admin "DROP DATABASE IF EXISTS $KEEL_BENCH_DB WITH (FORCE)" &&
    pg_admin "CREATE DATABASE $KEEL_BENCH_DB" ||
    die "cannot make the database $KEEL_BENCH_DB on $PG_SERVER"
  KEEL_DB_MADE=1
  keel_cli db upgrade >>"$KEEL_LOG" 2>&1 || { tail -n 20 "$KEEL_LOG" >&2; die "keel db upgrade failed"; }
}

# start_keel: Keel with one worker on its PostgreSQL database, production-style JSON logs
# to $KEEL_LOG, its own data folder, in its own process group (stopped whole).
start_keel() {
  port_busy "$KEEL_PORT" && die "port $KEEL_PORT is already in use (set KEEL_PORT)"
  [ -n "$KEEL_DB_MADE" ] || prepare_keel_db
  (
    cd "$REPO" &&
      KEEL_DATABASE_URL="$KEEL_DATABASE_URL" KEEL_DATA_DIR="$KEEL_DATA" KEEL_LOG_FORMAT=json \
        exec setsid "$REPO/.venv/bin/keel" serve --host 127.0.0.1 --port "$KEEL_PORT" --workers 1
  ) >>"$KEEL_LOG" 2>&1 </dev/null &
  KEEL_PID=$!
  local i
  for i in $(seq 1 150); do
    kill -0 "$KEEL_PID" 2>/dev/null || break
    if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$KEEL_PORT/health"; then return 0; fi
    sleep 0.2
  done
  say "Keel did not become ready on port $KEEL_PORT; the end of its log:"
  tail -n 20 "$KEEL_LOG" >&2
  die "Keel did not start"
}

ensure_keel() {
  if [ -n "$KEEL_PID" ] && kill -0 "$KEEL_PID" 2>/dev/null; then return 0; fi
  start_keel
}

# ---------------------------------------------------------------- measuring
measure_pair() {
  local name="$1" target="$2" base_app="$3" base_path="$4" keel_path="$5"; shift 5
  ensure_baseline "$base_app"
  ensure_keel
  if ! cut -f1 "$PAIRS" | grep -qx -- "$name"; then
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$target" "$base_app" "GET $base_path" "GET $keel_path" >>"$PAIRS"
  fi
  # Both servers idle before each measurement, whatever ran before.
  wait_idle "$KEEL_PID"; wait_idle "$BASE_PID"
  SERVER_PID="$BASE_PID"
  wrk_measure "$base_app" "GET $base_path" "http://127.0.0.1:$PORT$base_path" "$@"
  wait_idle "$KEEL_PID"; wait_idle "$BASE_PID"
  SERVER_PID="$KEEL_PID"
  wrk_measure keel "GET $keel_path" "http://127.0.0.1:$KEEL_PORT$keel_path" "$@"
}

keel_versions() {
  "$REPO/.venv/bin/python" - <<'EOF'
from importlib.metadata import version, PackageNotFoundError
out = []
for p in ("keel", "uvicorn", "uvloop", "httptools", "starlette", "fastapi", "pydantic", "structlog", "prometheus-client", "orjson"):
    try:
        out.append(f"{p}={version(p)}")
    except PackageNotFoundError:
        out.append(f"{p}=absent")
print("# keel venv: " + " ".join(out))
EOF
}

# ---------------------------------------------------------------- run
selected=(${SCENARIOS:-${ALL_SCENARIOS[*]}})
for s in "${selected[@]}"; do
  declare -F "scenario_$s" >/dev/null || die "unknown scenario '$s' (known: ${ALL_SCENARIOS[*]})"
done

{
  echo "# keel bench $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(nproc) cores  $(uname -sr)"
  echo "# keel commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD -- src 2>/dev/null || echo ' (src modified)')"
  echo "# baseline: $KEEL_BASELINE_DIR (one uvicorn worker, flags below)"
  print_versions
  keel_versions
  echo "# keel: keel serve --host 127.0.0.1 --port $KEEL_PORT --workers 1  (KEEL_LOG_FORMAT=json, access log on, to a file; PostgreSQL database $KEEL_BENCH_DB, no Redis)"
  echo "# rounds: $ROUNDS  scenarios: ${selected[*]}"
} | tee "$BENCH_OUT/summary.txt"

# Not piped (a pipe would run it in a subshell and lose the servers' ids); every figure
# is in results.tsv and in the table below.
for r in $(seq 1 "$ROUNDS"); do
  echo "## round $r/$ROUNDS"
  LABEL="round$r"
  for s in "${selected[@]}"; do "scenario_$s"; done
done

# Guard: every measurement must have happened (a crashed server shows as NA).
if awk -F'\t' '$4=="NA"{bad=1} END{exit !bad}' "$RESULTS"; then
  say "some measurements failed (NA): see $RESULTS"
fi

# Ratios: per round and scenario, Keel over baseline; the median over rounds.
python3 - "$RESULTS" "$PAIRS" "$BENCH_STRICT" <<'EOF' | tee -a "$BENCH_OUT/summary.txt"
import statistics, sys

results_path, pairs_path, strict = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [line.rstrip("\n").split("\t") for line in open(results_path) if line.strip()]
by = {}  # (label, app, endpoint) -> (rps, p50, p99, errors)
for label, app, ep, rps, p50, p99, errors in rows:
    by[(label, app, ep)] = (rps, p50, p99, errors)
labels = sorted({r[0] for r in rows}, key=lambda s: int(s.removeprefix("round")))

def num(v):
    try:
        return float(v)
    except ValueError:
        return None

below = False
print("\n## ratios (Keel / baseline; req/s higher is better, latencies lower is better)")
for line in open(pairs_path):
    name, target, base_app, base_ep, keel_ep = line.rstrip("\n").split("\t")
    target = None if target == "-" else float(target)
    print(f"\n### {name}: keel {keel_ep} vs {base_app} {base_ep}")
    print(f"{'round':<8} {'base req/s':>11} {'keel req/s':>11} {'base p50':>9} {'keel p50':>9} "
          f"{'base p99':>9} {'keel p99':>9} {'rps ratio':>10} {'p50 ratio':>10} {'p99 ratio':>10}")
    rps_ratios, p50_ratios, p99_ratios = [], [], []
    for label in labels:
        b = by.get((label, base_app, base_ep))
        k = by.get((label, "keel", keel_ep))
        if not b or not k:
            continue
        def ratio(keel_value, base_value):
            k_, b_ = num(keel_value), num(base_value)
            return k_ / b_ if k_ is not None and b_ else None
        rr, p50r, pr = ratio(k[0], b[0]), ratio(k[1], b[1]), ratio(k[2], b[2])
        for value, bucket in ((rr, rps_ratios), (p50r, p50_ratios), (pr, p99_ratios)):
            if value is not None:
                bucket.append(value)
        fmt = lambda v: "NA" if v is None else f"{v:.2f}"
        print(f"{label:<8} {b[0]:>11} {k[0]:>11} {b[1]:>9} {k[1]:>9} {b[2]:>9} {k[2]:>9} "
              f"{fmt(rr):>10} {fmt(p50r):>10} {fmt(pr):>10}")
        for who, m in (("baseline", b), ("keel", k)):
            if m[3] != "non2xx=0;sock=0":
                print(f"         ! {who} errors in {label}: {m[3]}")
    if not rps_ratios:
        print(f"ratio {keel_ep} vs {base_app.split('_')[0]} {base_ep}: NA (no complete round)")
        below = True
        continue
    med = statistics.median(rps_ratios)
    med_p50 = statistics.median(p50_ratios) if p50_ratios else float("nan")
    med_p99 = statistics.median(p99_ratios) if p99_ratios else float("nan")
    if target is None:
        verdict = "no target set"
    else:
        verdict = f"target >= {target:g}, " + ("meets target" if med >= target else "BELOW target")
    print(f"ratio {keel_ep.split()[-1]} vs {base_app.split('_')[0]} {base_ep.split()[-1]}: "
          f"{med:.2f} ({verdict}; median of {len(rps_ratios)} rounds, "
          f"range {min(rps_ratios):.2f}-{max(rps_ratios):.2f}); "
          f"latency ratios (lower is better): p50 {med_p50:.2f}, p99 {med_p99:.2f}")
    below = below or (target is not None and med < target)
sys.exit(1 if (below and strict) else 0)
EOF
status=$?
say "results in $BENCH_OUT (results.tsv, summary.txt)"
exit "$status"
