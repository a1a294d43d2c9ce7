#!/usr/bin/env bash
# Copied unchanged from the project's shared baseline (shared/bench/) so that a clone
# stands alone; only these two comment lines were added. Keep it byte-identical otherwise.
# Reusable baseline runner: starts each baseline app with ONE uvicorn worker on
# 127.0.0.1, warms each endpoint up, then measures it with wrk --latency and
# prints req/s, p50 and p99.
#
# Usage:  run_baseline.sh [app ...]        apps: raw_starlette fastapi_hello (default: both)
#         BENCH_LIB_ONLY=1 source run_baseline.sh   # only define the helpers
#                                                    # (wrk_measure, start_server, stop_server)
# Env (defaults):
#   PY=<python>   one that has uvicorn/uvloop/httptools/asyncpg/orjson/fastapi; by default a venv
#                 is made in BENCH_VENV (/tmp/keel-baseline-venv) on first use
#   BENCH_DSN=postgresql://postgres@127.0.0.1:5432/bench
#   PORT=8001  THREADS=1  CONNS=32  DURATION=10s  WARMUP=3s  WRK_TIMEOUT=2s
#   RESULTS=<file>   also append one TSV line per measurement: label app endpoint rps p50_ms p99_ms errors
#   LABEL=<text>     first column of the TSV lines (e.g. "round1")
# Needs: wrk (Debian package) and a reachable PostgreSQL; the database "bench" and its
#        users are made on first use.
# Only 127.0.0.1 is ever targeted; every wrk run is bounded by DURATION.

set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENCH_VENV="${BENCH_VENV:-/tmp/keel-baseline-venv}"
# The baselines' own environment, made on first use (pinned versions are recorded in each run's header).
if [ -z "${PY:-}" ]; then
  if [ ! -x "$BENCH_VENV/bin/python" ]; then
    python3 -m venv "$BENCH_VENV" >/dev/null &&
      "$BENCH_VENV/bin/pip" install -q "fastapi" "uvicorn[standard]" asyncpg orjson >/dev/null 2>&1 ||
      { echo "could not build the baseline environment in $BENCH_VENV" >&2; exit 1; }
  fi
  PY="$BENCH_VENV/bin/python"
fi
export BENCH_DSN="${BENCH_DSN:-postgresql://postgres@127.0.0.1:5432/bench}"
PORT="${PORT:-8001}"
THREADS="${THREADS:-1}"
CONNS="${CONNS:-32}"
DURATION="${DURATION:-10s}"
WARMUP="${WARMUP:-3s}"
WRK_TIMEOUT="${WRK_TIMEOUT:-2s}"
RESULTS="${RESULTS:-}"
LABEL="${LABEL:-run}"

# Convert a wrk duration ("812.00us", "1.20ms", "2.01s") to milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN{
    if (v ~ /us$/) { sub(/us$/,"",v); printf "%.3f", v/1000 }
    else if (v ~ /ms$/) { sub(/ms$/,"",v); printf "%.3f", v }
    else if (v ~ /m$/) { sub(/m$/,"",v); printf "%.3f", v*60000 }
    else if (v ~ /s$/) { sub(/s$/,"",v); printf "%.3f", v*1000 }
    else printf "NA" }'
}

# Parse a saved wrk --latency output file -> "rps p50_ms p99_ms errors"
parse_wrk() {
  local f="$1" rps p50 p99 non2xx sock
  rps=$(awk '/^Requests\/sec:/{print $2}' "$f")
  p50=$(awk '$1=="50%"{print $2}' "$f")
  p99=$(awk '$1=="99%"{print $2}' "$f")
  non2xx=$(awk '/Non-2xx or 3xx responses:/{print $NF}' "$f")
  sock=$(awk '/Socket errors:/{sub(/.*Socket errors: /,""); gsub(/ /,""); print}' "$f")
  echo "${rps:-NA} $(to_ms "${p50:-NA}") $(to_ms "${p99:-NA}") non2xx=${non2xx:-0};${sock:-sock=0}"
}

# wrk_measure APP_LABEL ENDPOINT_LABEL URL [extra wrk args, e.g. -s script.lua -H ...]
# Runs a WARMUP-long warm-up (discarded), then the measured run.
wrk_measure() {
  local app="$1" ep="$2" url="$3"; shift 3
  local out; out="$(mktemp /tmp/wrk.XXXXXX)"
  wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" --timeout "$WRK_TIMEOUT" "$@" "$url" >/dev/null 2>&1
  # requests abandoned by the warm-up may still be running server-side (threadpool work)
  [ -n "${SERVER_PID:-}" ] && wait_idle "$SERVER_PID"
  wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --timeout "$WRK_TIMEOUT" --latency "$@" "$url" >"$out" 2>&1
  local r; r=$(parse_wrk "$out")
  # shellcheck disable=SC2086
  set -- $r
  printf '%-16s %-28s %10s req/s  p50 %9s ms  p99 %9s ms  %s\n' "$app" "$ep" "$1" "$2" "$3" "$4"
  if [ -n "$RESULTS" ]; then
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$LABEL" "$app" "$ep" "$1" "$2" "$3" "$4" >>"$RESULTS"
  fi
  if [ -n "${WRK_KEEP:-}" ]; then mkdir -p "$WRK_KEEP"; cp "$out" "$WRK_KEEP/${LABEL}_${app}_${ep//\//_}.txt"; fi
  rm -f "$out"
}

# wait_idle PID: wait (max 30 s) until PID uses < 5% of a core over 0.5 s, so
# that work left over from a previous run does not leak into the next one.
wait_idle() {
  local pid="$1" i a b hz; hz=$(getconf CLK_TCK)
  for i in $(seq 1 60); do
    a=$(awk '{print $14+$15}' "/proc/$pid/stat" 2>/dev/null) || return 0
    sleep 0.5
    b=$(awk '{print $14+$15}' "/proc/$pid/stat" 2>/dev/null) || return 0
    [ $(( (b - a) * 100 )) -lt $(( hz * 5 / 2 )) ] && return 0
  done
}

# Server flags shared by every app measured against these baselines.
uvicorn_flags() {
  local loop=auto http=auto
  "$PY" -c 'import uvloop' 2>/dev/null && loop=uvloop
  "$PY" -c 'import httptools' 2>/dev/null && http=httptools
  echo "--host 127.0.0.1 --port $PORT --workers 1 --loop $loop --http $http --no-access-log --log-level warning"
}

# start_server MODULE:APP READY_PATH [workdir]  -> sets SERVER_PID
start_server() {
  local target="$1" ready="$2" dir="${3:-$HERE}"
  # shellcheck disable=SC2046
  (cd "$dir" && exec "$PY" -m uvicorn "$target" $(uvicorn_flags)) &
  SERVER_PID=$!
  local i
  for i in $(seq 1 100); do
    if curl -s -o /dev/null "http://127.0.0.1:$PORT$ready"; then return 0; fi
    sleep 0.2
  done
  echo "server $target did not become ready" >&2
  return 1
}

stop_server() {
  if [ -n "${SERVER_PID:-}" ]; then
    kill "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    SERVER_PID=""
  fi
}

print_versions() {
  echo "# python: $("$PY" -c 'import sys; print(sys.version.split()[0])')"
  "$PY" - <<'EOF'
from importlib.metadata import version, PackageNotFoundError
out = []
for p in ("uvicorn", "uvloop", "httptools", "starlette", "fastapi", "pydantic", "pydantic-core", "asyncpg", "orjson"):
    try:
        out.append(f"{p}={version(p)}")
    except PackageNotFoundError:
        out.append(f"{p}=absent")
print("# " + " ".join(out))
EOF
  echo "# wrk: $(wrk -v 2>&1 | head -1)"
  echo "# postgres: $(psql "$BENCH_DSN" -Atc 'show server_version' 2>/dev/null)"
  echo "# uvicorn flags: $(uvicorn_flags)"
  echo "# wrk: -t$THREADS -c$CONNS -d$DURATION --timeout $WRK_TIMEOUT --latency (after -d$WARMUP warm-up)"
}

run_app() {
  local app="$1"
  start_server "$app:app" /json || { stop_server; return 1; }
  wrk_measure "$app" "GET /json" "http://127.0.0.1:$PORT/json"
  wrk_measure "$app" "GET /user/{id}" "http://127.0.0.1:$PORT/user/1" -s "$HERE/random_user.lua"
  stop_server
}

if [ -z "${BENCH_LIB_ONLY:-}" ]; then
  trap stop_server EXIT
  if ! psql "$BENCH_DSN" -Atc 'select count(*) from users' >/dev/null 2>&1; then
    # make the database and its 10,000 users on first use
    psql "${BENCH_DSN%/*}/postgres" -Atc 'create database bench' >/dev/null 2>&1
    psql -q "$BENCH_DSN" -f "$HERE/seed.sql" >/dev/null ||
      { echo "cannot reach or seed $BENCH_DSN" >&2; exit 1; }
  fi
  print_versions
  apps=("$@")
  [ ${#apps[@]} -eq 0 ] && apps=(raw_starlette fastapi_hello)
  for a in "${apps[@]}"; do run_app "$a"; done
fi
