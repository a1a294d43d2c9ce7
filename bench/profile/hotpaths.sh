#!/usr/bin/env bash
# Sampling profiles (py-spy) of Keel's hot request paths, each under a bounded wrk load,
# broken down by bench/profile/breakdown.py. bench/profile/BEFORE.md was made with it.
#
#   bash bench/profile/hotpaths.sh [LABEL]        # LABEL: before, after, ... (default run)
#   SCENARIOS="item_read users_me" bash bench/profile/hotpaths.sh after
#
# Needs root (py-spy attaches to the server), Keel's .venv (py-spy is in its dev group;
# `python3 run.py keel --help` makes it), psql, wrk (apt-get installs it when missing) and
# PostgreSQL at $PG with trust auth. Only 127.0.0.1 is targeted, every load is bounded.
#
# What it does:
# 1. makes the database $DB (dropped first if left over, dropped at exit however it
#    ends) and migrates it with `keel db upgrade`;
# 2. serves Keel as `.venv/bin/keel serve --host 127.0.0.1 --port $PORT --workers 1`
#    with KEEL_LOG_FORMAT=json (access line on, to a file), KEEL_DATA_DIR in a temporary
#    folder (also the working folder, so no .env applies; every other KEEL_* of the
#    caller is unset), the token endpoint's rate limits raised to 1000000/minute, and
#    bench/profile/gcstats on PYTHONPATH (counts GC passes and their time; nothing else)
#    and $SERVER_ENV (settings to try, e.g. "KEEL_DATABASE_POOL_SIZE=32");
#    py-spy attaches to the process that listens on the port;
# 3. makes the user prof@bench.example (`keel users create --password-env`), signs it in
#    (password grant), creates one item with POST /api/v1/items and inserts 9,999 more
#    of the same owner with SQL (VACUUM ANALYZE after);
# 4. for each scenario: a ${WARMUP}s wrk warm-up; a ${DURATION}s wrk run without the
#    profiler (its req/s, latency, and the server's CPU seconds from /proc); then a
#    wrk run with py-spy recording ${DURATION}s of it, from 1 s in (`py-spy record
#    --format speedscope --rate $RATE --duration $DURATION --threads`); wrk is stopped
#    (SIGINT) 1 s after py-spy ends, and never runs past $((DURATION * 6 + 2))s (py-spy
#    falls behind on a busy machine and then takes longer than ${DURATION}s). It counts
#    the requests answered in py-spy's window from the access log, and the process's
#    CPU seconds, the event loop thread's on-CPU and runqueue-wait seconds
#    (/proc/PID/task/PID/schedstat) and the GC seconds in it; then breakdown.py.
# Scenarios (wrk -t1 -c$CONNS, bearer token of prof@bench.example):
#   item_read      GET /api/v1/items/{id}
#   users_me       GET /api/v1/users/me
#   items_list     GET /api/v1/items?limit=20 (10,000 items of the caller)
#   item_create    POST /api/v1/items {"title":"x"} (lua; the table grows meanwhile)
#   token_refresh  POST /api/v1/auth/token grant_type=refresh_token (lua): a pool of
#                  refresh tokens from $POOL password sign-ins made before each wrk run;
#                  each request takes one out, each answer's new one goes back in (a
#                  spent token is never sent again).
# Output: $OUT (default bench/out/profile-hotpaths-LABEL-<UTC time>/, ignored by git):
#   <scenario>.speedscope.json, <scenario>.md (the breakdown), <scenario>.breakdown.sh
#   (the breakdown's command, to run again with other rules or --detail), wrk outputs,
#   summary.tsv (scenario, req/s without and with the profiler, CPU µs/req, ...),
#   report.md (every breakdown), server.log (KEEP_LOG=1 keeps the access log too).
set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LABEL="${1:-run}"
for v in $(compgen -e | grep '^KEEL_'); do unset "$v"; done  # SERVER_ENV adds settings back
PORT="${PORT:-8202}"
PG="${PG:-postgresql://postgres@127.0.0.1:5432}"
DB="${DB:-keel_profile_$LABEL}"
DURATION="${DURATION:-15}" RATE="${RATE:-500}" WARMUP="${WARMUP:-3}" CONNS="${CONNS:-32}"
POOL="${POOL:-64}"
PYSPY_EXTRA="${PYSPY_EXTRA:-}"  # more py-spy flags, e.g. --nonblocking
SERVER_ENV="${SERVER_ENV:-}"    # more settings for the server only, e.g. "KEEL_DATABASE_POOL_SIZE=32"
SCENARIOS="${SCENARIOS:-item_read users_me items_list item_create token_refresh}"
OUT="${OUT:-$REPO/bench/out/profile-hotpaths-$LABEL-$(date -u +%Y%m%dT%H%M%SZ)}"
EMAIL="prof@bench.example" PASSWORD="bench passphrase 2026"
KEEL="$REPO/.venv/bin/keel" PYSPY="$REPO/.venv/bin/py-spy" PY="$REPO/.venv/bin/python"

say() { echo "[hotpaths] $*" >&2; }
die() { say "error: $*"; exit 1; }
[[ "$DB" =~ ^keel_profile_[a-z0-9_]+$ ]] || die "DB must look like keel_profile_<name> (got $DB)"
[ "$(id -u)" = 0 ] || die "py-spy needs root"
[ -x "$KEEL" ] && [ -x "$PYSPY" ] || die "no .venv with keel and py-spy: run python3 run.py keel --help"
command -v psql >/dev/null || die "psql is missing"
if ! command -v wrk >/dev/null; then
  say "installing wrk"; { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || die "could not install wrk"
fi

mkdir -p "$OUT"
TMP="$(mktemp -d /tmp/keel-hotpaths.XXXXXX)"
SERVER="" WRK=""
cleanup() {
  [ -n "$WRK" ] && kill "$WRK" 2>/dev/null
  if [ -n "$SERVER" ]; then
    kill -TERM -- "-$SERVER" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$SERVER" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$SERVER" 2>/dev/null
  fi
  [ -f "$TMP/server.log" ] && { if [ "${KEEP_LOG:-}" = 1 ]; then cp "$TMP/server.log" "$OUT/"; else grep -v '"event":"request"' "$TMP/server.log" >"$OUT/server.log"; fi; }
  psql -q -X "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

export KEEL_DATABASE_URL="postgresql+asyncpg://${PG#postgresql://}/$DB"
export KEEL_DATA_DIR="$TMP/data" KEEL_LOG_FORMAT=json
export KEEL_LIMIT_TOKEN_ACCOUNT=1000000/minute KEEL_LIMIT_TOKEN_IP=1000000/minute
mkdir -p "$KEEL_DATA_DIR"
BASE="http://127.0.0.1:$PORT"

psql -q -X -v ON_ERROR_STOP=1 "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null || die "could not make $DB"
(cd "$KEEL_DATA_DIR" && "$KEEL" db upgrade) >"$TMP/migrate.log" 2>&1 || { cat "$TMP/migrate.log" >&2; die "keel db upgrade failed"; }

# shellcheck disable=SC2086
( cd "$KEEL_DATA_DIR" && PYTHONPATH="$REPO/bench/profile/gcstats" KEEL_PROFILE_GC_STATS="$TMP/gc.bin" \
    exec env $SERVER_ENV setsid "$KEEL" serve --host 127.0.0.1 --port "$PORT" --workers 1 ) >"$TMP/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 300); do curl -s -o /dev/null "$BASE/health" && break; kill -0 "$SERVER" 2>/dev/null || break; sleep 0.2; done
curl -s -o /dev/null "$BASE/health" || { cat "$TMP/server.log" >&2; die "keel serve did not come up"; }
SPID="$(ss -ltnpH "sport = :$PORT" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)"
[ -n "$SPID" ] || die "no process listens on $PORT"
if [ "$SPID" = "$SERVER" ]; then where="the started process itself"; else where="a child of $SERVER ($(ps -o ppid= -p "$SPID" | tr -d ' ') is its parent)"; fi
say "keel serve started as $SERVER; $SPID listens on $PORT: $where; threads: $(ls /proc/"$SPID"/task | wc -l)"

json_field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
sign_in() {  # prints the whole token answer
  curl -s --max-time 30 -X POST "$BASE/api/v1/auth/token" --data-urlencode grant_type=password \
    --data-urlencode "username=$EMAIL" --data-urlencode "password=$PASSWORD"
}
access_token() { sign_in | json_field access_token; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SPID/stat"; }
# the event loop's thread (the main thread, tid = pid): on-CPU and runqueue-wait ns
loop_sched() { awk '{print $1, $2}' "/proc/$SPID/task/$SPID/schedstat"; }
cpu_pressure() { awk -F'[ =]' '/^some/{print $3}' /proc/pressure/cpu 2>/dev/null || echo -; }
# GC totals: counts gen0-2, wall seconds gen0-2, CPU seconds gen0-2 (gcstats/sitecustomize.py)
gc_now() { python3 -c 'import struct, sys; c = struct.unpack("3q3d3d", open(sys.argv[1], "rb").read()); print(*c)' "$TMP/gc.bin"; }
served() { grep -c '"event":"request"' "$TMP/server.log"; }
pg_sessions() { psql -X -At "$PG/postgres" -c "SELECT sessions FROM pg_stat_database WHERE datname = '$DB'"; }
HZ="$(getconf CLK_TCK)"

(cd "$KEEL_DATA_DIR" && KEEL_PROFILE_PW="$PASSWORD" "$KEEL" users create "$EMAIL" --password-env KEEL_PROFILE_PW) >"$TMP/user.log" 2>&1 || { cat "$TMP/user.log" >&2; die "keel users create failed"; }
TOKEN="$(access_token)" || die "could not sign in"
answer="$(curl -s -X POST "$BASE/api/v1/items" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{"title":"x"}')"
ITEM_ID="$(json_field id <<<"$answer")" || die "could not create the item: $answer"
OWNER="$(json_field owner_id <<<"$answer")"
[[ "$ITEM_ID" =~ ^[0-9a-f-]{36}$ && "$OWNER" =~ ^[0-9a-f-]{36}$ ]] || die "odd item: $answer"
psql -q -X -v ON_ERROR_STOP=1 "$PG/$DB" >/dev/null -c "INSERT INTO items (id, owner_id, title, description, status, tags, version, created_at, updated_at)
    SELECT gen_random_uuid(), '$OWNER', 'Item ' || i, 'Filler item ' || i, 'active', '[\"a\"]'::jsonb,
           1, now() - i * interval '1 second', now() - i * interval '1 second'
    FROM generate_series(1, 9999) AS i" -c "VACUUM ANALYZE items" || die "could not insert the items"
say "user $EMAIL ($OWNER), item $ITEM_ID, $(psql -X -At "$PG/$DB" -c 'SELECT count(*) FROM items') items"

cat >"$TMP/post_item.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"title":"x"}'
wrk.headers["Content-Type"] = "application/json"
LUA
cat >"$TMP/refresh.lua" <<'LUA'
-- A pool of refresh tokens (KEEL_PROFILE_POOL, one a line): each request takes one out,
-- each answer's new token goes back in. A spent token is never sent again.
local pool = {}
local missing = 0
init = function(args)
  for line in io.lines(os.getenv("KEEL_PROFILE_POOL")) do pool[#pool + 1] = line end
end
request = function()
  local token = table.remove(pool)
  if token == nil then missing = missing + 1; token = "pool-empty" end
  return wrk.format("POST", "/api/v1/auth/token",
    { ["Content-Type"] = "application/x-www-form-urlencoded" },
    "grant_type=refresh_token&refresh_token=" .. token)
end
response = function(status, headers, body)
  local token = body:match('"refresh_token"%s*:%s*"([^"]+)"')
  if token then table.insert(pool, 1, token) end
end
LUA
make_pool() {  # make_pool FILE: $POOL refresh tokens from password sign-ins
  : >"$1"
  for _ in $(seq 1 "$POOL"); do sign_in | json_field refresh_token >>"$1" || return 1; done
}

# wrk_args SCENARIO: the wrk arguments after -t1 -cN -dD
wrk_args() {
  case "$1" in
    item_read) echo "-H|Authorization: Bearer $TOKEN|$BASE/api/v1/items/$ITEM_ID" ;;
    users_me) echo "-H|Authorization: Bearer $TOKEN|$BASE/api/v1/users/me" ;;
    items_list) echo "-H|Authorization: Bearer $TOKEN|$BASE/api/v1/items?limit=20" ;;
    item_create) echo "-H|Authorization: Bearer $TOKEN|-s|$TMP/post_item.lua|$BASE/api/v1/items" ;;
    token_refresh) echo "-s|$TMP/refresh.lua|$BASE/api/v1/auth/token" ;;
    *) return 1 ;;
  esac
}
run_wrk() {  # run_wrk SCENARIO SECONDS OUTFILE (token_refresh: make the pool first)
  local args
  IFS='|' read -r -a args <<<"$(wrk_args "$1")"
  KEEL_PROFILE_POOL="$TMP/pool.txt" wrk -t1 -c"$CONNS" -d"$2"s --timeout 5s --latency "${args[@]}" >"$3" 2>&1
}
field() { grep -E "$1" "$2" | awk '{print $2}' | head -1; }

printf 'scenario\trps_plain\tcpu_us_per_req_plain\tloop_cpu_us_per_req_plain\tgc_us_per_req_plain\tnew_pg_connections_plain\tp50_plain\tp99_plain\tnon2xx_plain\trps_profiled\tcpu_us_per_req_profiled\tloop_cpu_us_per_req_profiled\twindow_s\trequests_window\tgc_s_window\tcpu_pressure_avg10\tload_avg\n' >"$OUT/summary.tsv"
{
  echo "# keel commit: $(git -C "$REPO" rev-parse HEAD)$(git -C "$REPO" diff --quiet HEAD -- src || echo ' (src modified)')"
  echo "# $("$PY" -c 'import importlib.metadata as m; print(" ".join(f"{p}={m.version(p)}" for p in ("fastapi","starlette","uvicorn","uvloop","httptools","pydantic","sqlalchemy","asyncpg","greenlet","structlog","prometheus-client","pyjwt","limits")))')"
  echo "# $("$PYSPY" --version); $(wrk -v 2>&1 | head -1); postgres $(psql -X -At "$PG/postgres" -c 'SHOW server_version')"
  echo "# python $("$PY" -c 'import sys; print(sys.version.split()[0])'); $(nproc) cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# server settings: KEEL_LOG_FORMAT=json KEEL_LIMIT_TOKEN_ACCOUNT/IP=1000000/minute ${SERVER_ENV:-(no others)}"
  echo "# wrk -t1 -c$CONNS --timeout 5s; warm-up ${WARMUP}s, plain ${DURATION}s, profiled: py-spy --rate $RATE --duration $DURATION --threads $PYSPY_EXTRA from 1 s into a wrk run stopped 1 s after it (at most $((DURATION * 6 + 2))s)"
} >"$OUT/header.txt"
cat "$OUT/header.txt" >&2

for s in $SCENARIOS; do
  wrk_args "$s" >/dev/null || die "unknown scenario $s"
  TOKEN="$(access_token)" || die "could not sign in"  # access tokens last 15 minutes
  say "$s: warm-up ${WARMUP}s"
  if [ "$s" = token_refresh ]; then make_pool "$TMP/pool.txt" || die "could not make the token pool"; fi
  run_wrk "$s" "$WARMUP" "$OUT/$s.wrk-warmup.txt"
  sleep 1
  say "$s: plain ${DURATION}s"
  if [ "$s" = token_refresh ]; then make_pool "$TMP/pool.txt" || die "could not make the token pool"; fi
  c0="$(cpu_ticks)" r0="$(served)" g0="$(gc_now)" l0="$(loop_sched)" p0="$(pg_sessions)"
  run_wrk "$s" "$DURATION" "$OUT/$s.wrk-plain.txt"
  c1="$(cpu_ticks)" r1="$(served)" g1="$(gc_now)" l1="$(loop_sched)" p1="$(pg_sessions)"
  new_conns="$((p1 - p0))"
  conns_per_100="$(python3 -c "print(round($new_conns / max(1, $r1 - $r0) * 100, 1))")"
  rps_plain="$(field '^Requests/sec' "$OUT/$s.wrk-plain.txt")"
  read -r cpu_plain loop_plain gc_plain < <(python3 - "$c0" "$c1" "$HZ" "$r0" "$r1" "$g0" "$g1" "$l0" "$l1" <<'PY'
import sys
c0, c1, hz, r0, r1 = (float(x) for x in sys.argv[1:6])
g0, g1, l0, l1 = (list(map(float, a.split())) for a in sys.argv[6:10])
n = max(1, r1 - r0)
gc_cpu = sum(g1[6:9]) - sum(g0[6:9])
print(round((c1 - c0) / hz / n * 1e6), round((l1[0] - l0[0]) / 1e9 / n * 1e6), round(gc_cpu / n * 1e6))
PY
)
  p50="$(field '^ +50%' "$OUT/$s.wrk-plain.txt")" p99="$(field '^ +99%' "$OUT/$s.wrk-plain.txt")"
  non2xx="$(grep -E 'Non-2xx|Socket errors' "$OUT/$s.wrk-plain.txt" | tr -s ' ' | tr '\n' ' ')"
  sleep 1
  say "$s: profiled (py-spy ${DURATION}s inside a wrk run)"
  if [ "$s" = token_refresh ]; then make_pool "$TMP/pool.txt" || die "could not make the token pool"; fi
  IFS='|' read -r -a args <<<"$(wrk_args "$s")"
  KEEL_PROFILE_POOL="$TMP/pool.txt" wrk -t1 -c"$CONNS" -d"$((DURATION * 6 + 2))"s --timeout 5s --latency "${args[@]}" >"$OUT/$s.wrk-profiled.txt" 2>&1 &
  WRK=$!
  sleep 1
  c0="$(cpu_ticks)" r0="$(served)" g0="$(gc_now)" l0="$(loop_sched)" t0="$(date +%s.%N)"
  # shellcheck disable=SC2086
  "$PYSPY" record --format speedscope --rate "$RATE" --duration "$DURATION" --pid "$SPID" --threads $PYSPY_EXTRA \
    -o "$OUT/$s.speedscope.json" >"$OUT/$s.py-spy.log" 2>&1
  c1="$(cpu_ticks)" r1="$(served)" g1="$(gc_now)" l1="$(loop_sched)" t1="$(date +%s.%N)"
  pressure="$(cpu_pressure)"
  sleep 1
  kill -INT "$WRK" 2>/dev/null; wait "$WRK"; WRK=""
  read -r window requests cpu_s loop_cpu loop_wait gc_s gc_detail < <(python3 - "$t0" "$t1" "$r0" "$r1" "$c0" "$c1" "$HZ" "$g0" "$g1" "$l0" "$l1" <<'PY'
import sys
t0, t1, r0, r1, c0, c1, hz = (float(x) for x in sys.argv[1:8])
g0, g1, l0, l1 = (list(map(float, a.split())) for a in sys.argv[8:12])
counts = [int(g1[i] - g0[i]) for i in range(3)]
secs = [g1[i + 3] - g0[i + 3] for i in range(3)]
cpus = [g1[i + 6] - g0[i + 6] for i in range(3)]
detail = ",".join(f"gen{i}:{counts[i]}x/{cpus[i]*1000:.0f}ms-cpu/{secs[i]*1000:.0f}ms-wall" for i in range(3))
loop_wait = (l1[1] - l0[1]) / 1e9
loop_cpu = (l1[0] - l0[0]) / 1e9
print(f"{t1 - t0:.3f} {int(r1 - r0)} {(c1 - c0) / hz:.2f} {loop_cpu:.3f} {loop_wait:.3f} {sum(cpus):.3f} {detail}")
PY
)
  rps_prof="$(python3 -c "print(round($requests / $window, 1))")"
  cpu_prof="$(python3 -c "print(round($cpu_s / max(1, $requests) * 1e6))")"
  statuses="$(grep '"event":"request"' "$TMP/server.log" | sed -n "$((r0 + 1)),${r1}p" | grep -o '"status":[0-9]*' | sort | uniq -c | tr -s ' ' | tr '\n' ' ')"
  loop_us="$(python3 -c "print(round($loop_cpu / max(1, $requests) * 1e6))")"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$rps_plain" "$cpu_plain" "$loop_plain" "$gc_plain" "$new_conns" "$p50" "$p99" "${non2xx:-0}" \
    "$rps_prof" "$cpu_prof" "$loop_us" "$window" "$requests" "$gc_s" "$pressure" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/summary.tsv"
  {
    echo "Without the profiler (${DURATION}s): **$rps_plain req/s**, CPU per request $cpu_plain µs (process) / $loop_plain µs (event loop thread), GC $gc_plain µs CPU per request, $new_conns new PostgreSQL connections ($conns_per_100 per 100 requests), p50 $p50, p99 $p99${non2xx:+; $non2xx}."
    echo
    echo "Profiled window: statuses $statuses; py-spy: $(grep -o 'Samples: [0-9]* Errors: [0-9]*' "$OUT/$s.py-spy.log")$(grep -o '[0-9.]*s behind in sampling' "$OUT/$s.py-spy.log" | tail -1 | sed 's/^/, /'); CPU pressure (some, avg10) $pressure%."
    echo
    # the same breakdown again later (other rules, --detail): bash <scenario>.breakdown.sh
    printf 'python3 %q %q --seconds %s --requests %s --cpu-seconds %s --loop-cpu-seconds %s --loop-wait-seconds %s --gc-seconds %s --gc-detail %q --plain-rps %s --plain-loop-cpu-us %s --plain-gc-us %s --title %q "$@"\n' \
      "$REPO/bench/profile/breakdown.py" "$OUT/$s.speedscope.json" "$window" "$requests" "$cpu_s" "$loop_cpu" "$loop_wait" \
      "$gc_s" "$gc_detail" "$rps_plain" "$loop_plain" "$gc_plain" "$s" >"$OUT/$s.breakdown.sh"
    bash "$OUT/$s.breakdown.sh"
  } >"$OUT/$s.md"
  say "$s: plain $rps_plain req/s ($cpu_plain µs CPU/req, loop $loop_plain, GC $gc_plain, $new_conns new PG connections); profiled $rps_prof req/s ($cpu_prof µs CPU/req, loop $loop_us), GC ${gc_s}s [$gc_detail], statuses $statuses, pressure $pressure"
  sleep 2
done

{
  cat "$OUT/header.txt"; echo
  column -t -s $'\t' "$OUT/summary.tsv"; echo
  for s in $SCENARIOS; do [ -f "$OUT/$s.md" ] && { cat "$OUT/$s.md"; echo; }; done
} >"$OUT/report.md"
say "done: $OUT/report.md"
