#!/usr/bin/env bash
# Keel's benchmark harness: measures Keel and the floor apps (bench/floor/) with wrk in one
# run, interleaved, and prints each Keel figure as a ratio to the floor's.
#
#   bash bench/run.sh                        # every scenario, ROUNDS rounds (bench/README.md)
#   SCENARIOS="health item" bash bench/run.sh
#   SERVERS="uvicorn granian gunicorn" bash bench/run.sh   # bench/servers.sh does this
#
# It sources bench/floor/run_baseline.sh with BENCH_LIB_ONLY=1 and uses its helpers
# (start_server, wrk_measure, wait_idle, print_versions, ...), so the floor and Keel are
# measured by the same code with the same wrk settings. Each round measures, for every
# scenario, the floor first and then Keel (under each server of SERVERS, in an order that
# rotates from round to round); the reported ratio is the median over the rounds.
#
# Env (defaults):
#   ROUNDS=3          rounds (floor, then Keel, per scenario)
#   SCENARIOS=<all>   space-separated subset of ALL_SCENARIOS below
#   SERVERS=uvicorn   Keel under: uvicorn (`keel serve --workers 1`), granian, gunicorn
#   PORT=8101         the floor's port (raw_starlette or fastapi_hello, one at a time)
#   KEEL_PORT=8102    Keel under uvicorn   GRANIAN_PORT=8103   GUNICORN_PORT=8104
#   THREADS=1 CONNS=32 DURATION=10s WARMUP=3s WRK_TIMEOUT=2s   (the floor's helpers use them)
#   PY=<python>       the floor's python (default: a venv in BENCH_VENV=/tmp/keel-baseline-venv)
#   BENCH_DSN=postgresql://postgres@127.0.0.1:5432/bench   (the floor's database)
#   KEEL_BENCH_DB=keel_bench_run   Keel's throwaway database on the same server: made,
#                     migrated with `keel db upgrade`, dropped at the end however the run ends
#   LOGIN_CLIENTS=8   concurrent password logins in health_under_logins
#   REFRESH_POOL=<4 x CONNS>  live refresh tokens kept for the refresh scenario
#   BENCH_METRICS_MULTIPROC=1   run every Keel server with a fresh PROMETHEUS_MULTIPROC_DIR
#                     (what `keel serve --workers N>1` prepares); unset: none, as
#                     `keel serve --workers 1` runs
#   BENCH_OUT=<repo>/bench/out/<timestamp>   where results.tsv and summary.txt are written
#   BENCH_KEEP_LOGS=1  keep Keel's server logs (in a temp dir, path printed) after the run
#   BENCH_STRICT=1     exit 1 when a scenario's median ratio misses its target
# Only 127.0.0.1 is ever targeted; every wrk run is bounded by DURATION (or WARMUP), every
# login loop by its own deadline.

# Scenarios and hooks are called by name ("scenario_$s"), which shellcheck cannot follow.
# shellcheck disable=SC2317
# shellcheck source-path=SCRIPTDIR
set -u
set -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FLOOR_DIR="$REPO/bench/floor"
LUA_DIR="$REPO/bench/lua"
VENV="$REPO/.venv"
PORT="${PORT:-8101}"
KEEL_PORT="${KEEL_PORT:-8102}"
GRANIAN_PORT="${GRANIAN_PORT:-8103}"
GUNICORN_PORT="${GUNICORN_PORT:-8104}"
ROUNDS="${ROUNDS:-3}"
SERVERS="${SERVERS:-uvicorn}"
BENCH_STRICT="${BENCH_STRICT:-}"
BENCH_KEEP_LOGS="${BENCH_KEEP_LOGS:-}"
BENCH_METRICS_MULTIPROC="${BENCH_METRICS_MULTIPROC:-}"
KEEL_BENCH_DB="${KEEL_BENCH_DB:-keel_bench_run}"
LOGIN_CLIENTS="${LOGIN_CLIENTS:-8}"
REFRESH_POOL="${REFRESH_POOL:-}"  # default: 4 x CONNS (set once CONNS is known)
# Every bench account's password: throwaway accounts in a throwaway database.
export BENCH_PASSWORD="bench passphrase 2026"
# Access tokens last 900 s: one older than this is replaced before a measurement.
TOKEN_MAX_AGE=600

say() { echo "bench: $*" >&2; }
die() { say "error: $*"; exit 2; }

# ---------------------------------------------------------------- scenarios
# A scenario is a function `scenario_<name>` run once per round. Most measure the floor
# (raw Starlette's GET /user/{id}, random ids) and then Keel under each server, with
# floor_then_keel; each (scenario, server) is a pair in the report, with its target: the
# least median ratio of Keel's req/s to the floor's. Add one: write the function, append
# its name to ALL_SCENARIOS, document it in bench/README.md.

ALL_SCENARIOS=(fastapi_floor health users_me item items_list item_create item_patch refresh
  health_under_logins)
FLOOR_USER=(raw_starlette "GET /user/{id}" /user/1 -s "$FLOOR_DIR/random_user.lua")

# The reference line: bare FastAPI (Depends, response_model) doing the floor's work.
scenario_fastapi_floor() {
  measure_floor "${FLOOR_USER[@]}"
  measure_floor fastapi_hello "GET /user/{id}" /user/1 -s "$FLOOR_DIR/random_user.lua"
  add_pair fastapi_floor floor - - raw_starlette "GET /user/{id}" fastapi_hello "GET /user/{id}"
}

# /health (the whole middleware stack, no database) against raw Starlette's constant JSON.
scenario_health() {
  floor_then_keel health 0.75 "GET /health" /health -- raw_starlette "GET /json" /json
}

# GET /api/v1/users/me: token check, one SELECT of the user, the user as JSON.
scenario_users_me() {
  prepare_reader
  bearer_for "$READER"
  floor_then_keel users_me 0.30 "GET /api/v1/users/me" /api/v1/users/me -H "$BEARER"
}

# GET /api/v1/items/{id}: a random one of the reader's 10,000 items (bench/lua/keel_item_read.lua),
# as the floor reads a random one of its 10,000 users.
scenario_item() {
  prepare_reader
  bearer_for "$READER"
  floor_then_keel item 0.30 "GET /api/v1/items/{id}" /api/v1/items/x \
    -s "$LUA_DIR/keel_item_read.lua" -H "$BEARER"
}

# GET /api/v1/items?limit=20: the first page of the reader's 10,000 items (newest first).
scenario_items_list() {
  prepare_reader
  bearer_for "$READER"
  floor_then_keel items_list 0.25 "GET /api/v1/items?limit=20" "/api/v1/items?limit=20" -H "$BEARER"
}

# POST /api/v1/items: a new item from a small JSON body (bench/lua/keel_item_create.lua).
scenario_item_create() {
  prepare_user "$WRITER"
  bearer_for "$WRITER"
  floor_then_keel item_create 0.20 "POST /api/v1/items" /api/v1/items \
    -s "$LUA_DIR/keel_item_create.lua" -H "$BEARER"
}

# PATCH /api/v1/items/{id} with If-Match: round-robin over 1,000 items, each request with
# the item's current version (bench/lua/keel_item_patch.lua); the 412s are reported.
scenario_item_patch() {
  prepare_patcher
  bearer_for "$PATCHER"
  AFTER_KEEL=note_patch_tally
  floor_then_keel item_patch 0.20 "PATCH /api/v1/items/{id}" /api/v1/items/x \
    -s "$LUA_DIR/keel_item_patch.lua" -H "$BEARER"
}

# POST /api/v1/auth/token, grant_type=refresh_token, from a pool of live refresh tokens
# that the script replenishes from the answers (bench/lua/keel_refresh.lua).
scenario_refresh() {
  prepare_user "$REFRESHER"
  BEFORE_KEEL=top_up_refresh_pool
  AFTER_KEEL=note_refresh_tally
  floor_then_keel refresh 0.20 "POST /api/v1/auth/token (refresh)" /api/v1/auth/token \
    -s "$LUA_DIR/keel_refresh.lua"
}

# /health while LOGIN_CLIENTS clients sign in with the password grant in a loop, against
# /health idle in the same round on the same server: req/s ratio >= 0.6, p99 <= 3x. Then
# the logins alone for DURATION: logins/s, per core, and Keel's CPU per login.
scenario_health_under_logins() {
  local server
  prepare_login_users
  for server in $(servers_this_round); do
    health_beside_logins "$server"
    logins_alone "$server"
  done
}

# ---------------------------------------------------------------- scenario helpers
READER="reader@bench.example"        # 10,000 items: item, items_list, users_me
WRITER="writer@bench.example"        # item_create
PATCHER="patcher@bench.example"      # 1,000 items: item_patch
REFRESHER="refresher@bench.example"  # refresh
PATCH_ITEMS=1000
BEFORE_KEEL=""  # a function run before each Keel measurement of the next floor_then_keel
AFTER_KEEL=""   # ... and after it, with the server's name

# floor_then_keel NAME TARGET KEEL_EP KEEL_PATH [keel wrk args...] [-- FLOOR_APP FLOOR_EP FLOOR_PATH [floor wrk args...]]
# The floor (by default raw Starlette's GET /user/{id}, random ids), then Keel under each
# server of the round; each Keel measurement is a pair with the floor's.
floor_then_keel() {
  local name="$1" target="$2" keel_ep="$3" keel_path="$4" server
  shift 4
  local keel_args=() floor=("${FLOOR_USER[@]}")
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do keel_args+=("$1"); shift; done
  if [ "${1:-}" = "--" ]; then shift; floor=("$@"); fi
  measure_floor "${floor[@]}"
  for server in $(servers_this_round); do
    [ -z "$BEFORE_KEEL" ] || "$BEFORE_KEEL" "$server"
    measure_keel "$server" "$keel_ep" "$keel_path" "${keel_args[@]}"
    [ -z "$AFTER_KEEL" ] || "$AFTER_KEEL" "$server"
    add_pair "$name" "$server" "$target" - "${floor[0]}" "${floor[1]}" "keel:$server" "$keel_ep"
  done
  BEFORE_KEEL="" AFTER_KEEL=""
}

# The servers in this round's order: rotated by one each round, so none is always first.
servers_this_round() {
  local list n i
  read -r -a list <<<"$SERVERS"
  n=${#list[@]}
  for ((i = 0; i < n; i++)); do echo "${list[$(((i + ROUND - 1) % n))]}"; done
}

declare -A TOKENS=() TOKEN_AT=() MADE=()

# prepare_user EMAIL: the account, made once with `keel users create`.
prepare_user() {
  [ -z "${MADE[$1]:-}" ] || return 0
  ensure_keel "${SERVERS%% *}"  # the database is made (and migrated) by the first start
  KEEL_BENCH_PASSWORD="$BENCH_PASSWORD" keel_cli users create "$1" \
    --password-env KEEL_BENCH_PASSWORD >>"$KEEL_LOG" 2>&1 || die "keel users create $1 failed"
  MADE[$1]=1
}

# bearer_for EMAIL: BEARER="Authorization: Bearer <a fresh access token of EMAIL>".
bearer_for() {
  local answer now
  now="$(date +%s)"
  ensure_keel "${SERVERS%% *}"
  if [ -z "${TOKENS[$1]:-}" ] || [ $((now - TOKEN_AT[$1])) -ge "$TOKEN_MAX_AGE" ]; then
    answer="$(client token "$(setup_url)" "$1")" || die "could not sign $1 in"
    TOKENS[$1]="$(json_field access_token <<<"$answer")" || die "no access token for $1: $answer"
    TOKEN_AT[$1]="$now"
  fi
  BEARER="Authorization: Bearer ${TOKENS[$1]}"
}

# client ARGS...: bench/bench_client.py under Keel's python (httpx).
client() { "$VENV/bin/python" "$REPO/bench/bench_client.py" "$@" </dev/null; }

# json_field NAME: the top-level field NAME of the JSON object on stdin.
json_field() {
  python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1" 2>/dev/null
}

# psql_keel SQL...: statements on Keel's database; their output on stdout, unaligned.
psql_keel() {
  local args=() sql
  for sql in "$@"; do args+=(-c "$sql"); done
  PGOPTIONS="-c client_min_messages=warning" psql -q -X -At -v ON_ERROR_STOP=1 "$KEEL_DSN" "${args[@]}"
}

# user_id EMAIL: the account's id.
user_id() { psql_keel "SELECT id FROM users WHERE email = '$1'"; }

# add_items OWNER_ID COUNT: COUNT items of the owner, inserted with SQL (version 1,
# created a second apart), then VACUUM ANALYZE so the planner knows the table.
add_items() {
  psql_keel "INSERT INTO items (id, owner_id, title, description, status, tags, version, created_at, updated_at)
    SELECT gen_random_uuid(), '$1', 'Item ' || i, 'Filler item ' || i, 'active', '[\"a\"]'::jsonb,
           1, now() - i * interval '1 second', now() - i * interval '1 second'
    FROM generate_series(1, $2) AS i" "VACUUM ANALYZE items" >/dev/null ||
    die "could not insert $2 items"
}

# prepare_reader: the reader, one item made through the API and 9,999 more with SQL (a
# table the size of the floor's); their ids in $READER_IDS for keel_item_read.lua.
READER_IDS=""
prepare_reader() {
  [ -z "$READER_IDS" ] || return 0
  local answer item owner
  prepare_user "$READER"
  bearer_for "$READER"
  answer="$(curl -s --max-time 30 -X POST "$(setup_url)/api/v1/items" -H "$BEARER" \
    -H 'Content-Type: application/json' \
    -d '{"title": "Benchmark item", "description": "Read by bench/run.sh", "status": "active", "tags": ["a", "b"]}')"
  item="$(json_field id <<<"$answer")" || die "could not create an item: $answer"
  owner="$(json_field owner_id <<<"$answer")" || die "no owner_id in: $answer"
  [[ "$item" =~ ^[0-9a-f-]{36}$ && "$owner" =~ ^[0-9a-f-]{36}$ ]] || die "odd item: $answer"
  add_items "$owner" 9999
  READER_IDS="$TMP/reader_item_ids.txt"
  export BENCH_ITEM_IDS="$READER_IDS"
  psql_keel "SELECT id FROM items WHERE owner_id = '$owner'" >"$READER_IDS" || die "no item ids"
  [ "$(wc -l <"$READER_IDS")" -eq 10000 ] || die "the reader should own 10,000 items"
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "$BEARER" "$(setup_url)/api/v1/items/$item")" = 200 ] ||
    die "GET /api/v1/items/$item does not answer 200"
  say "reader $READER owns 10,000 items in $KEEL_BENCH_DB"
}

# prepare_patcher: the patcher's 1,000 items and their versions, in BENCH_PATCH_STATE.
prepare_patcher() {
  [ -z "${BENCH_PATCH_STATE:-}" ] || return 0
  prepare_user "$PATCHER"
  local owner
  owner="$(user_id "$PATCHER")" || die "no id for $PATCHER"
  add_items "$owner" "$PATCH_ITEMS"
  export BENCH_PATCH_STATE="$TMP/patch_state.txt"
  psql_keel "SELECT id || ' ' || version || ' 0' FROM items WHERE owner_id = '$owner' ORDER BY id" \
    >"$BENCH_PATCH_STATE" || die "no items to patch"
}

# note_patch_tally SERVER: the measured run's status counts (the tally's last line; the
# one before is the warm-up's) as a note in the report; 412s should be ~0.
note_patch_tally() {
  local line
  line="$(tail -n 1 "$BENCH_PATCH_STATE.tally" 2>/dev/null)"
  add_note item_patch "$1" "measured run's statuses: ${line:-none} (412 = stale If-Match)"
}

# top_up_refresh_pool: REFRESH_POOL live refresh tokens in BENCH_REFRESH_POOL (each wrk
# run loses the tokens of the requests in flight when it stops).
top_up_refresh_pool() {
  export BENCH_REFRESH_POOL="${BENCH_REFRESH_POOL:-$TMP/refresh_pool.txt}"
  touch "$BENCH_REFRESH_POOL"
  local have
  have="$(grep -c . "$BENCH_REFRESH_POOL")"
  if [ "$have" -lt "$REFRESH_POOL" ]; then
    client sessions "$(setup_url)" "$REFRESHER" $((REFRESH_POOL - have)) >>"$BENCH_REFRESH_POOL" ||
      die "could not make refresh tokens for $REFRESHER"
  fi
}

note_refresh_tally() {
  local line
  line="$(tail -n 1 "$BENCH_REFRESH_POOL.tally" 2>/dev/null)"
  add_note refresh "$1" "measured run's statuses: ${line:-none}"
}

LOGIN_USERS=()
prepare_login_users() {
  [ ${#LOGIN_USERS[@]} -eq 0 ] || return 0
  local i
  for i in $(seq 1 "$LOGIN_CLIENTS"); do
    prepare_user "login-$i@bench.example"
    LOGIN_USERS+=("login-$i@bench.example")
  done
}

# health_beside_logins SERVER: idle /health, then /health with the login loop running.
health_beside_logins() {
  local server="$1" url loop_out loop_pid seconds
  url="$(server_url "$server")"
  measure_keel "$server" "GET /health (idle)" /health
  wait_quiet
  loop_out="$TMP/logins-$ROUND-$server.json"
  # The loop covers wrk's warm-up and measured run, plus a margin at each end.
  seconds=$(($(seconds_of "$WARMUP") + $(seconds_of "$DURATION") + 3))
  client logins "$url" "$seconds" "${LOGIN_USERS[@]}" >"$loop_out" &
  loop_pid=$!
  LOOP_PIDS+=("$loop_pid")
  sleep 1
  # No idle wait inside wrk_measure: the server is meant to be busy with the logins.
  SERVER_PID=""
  wrk_measure "keel:$server" "GET /health beside $LOGIN_CLIENTS logins" "$url/health"
  wait "$loop_pid"
  add_note health_under_logins "$server" "login loop during the measurement: $(cat "$loop_out")"
  add_pair health_under_logins "$server" 0.6 3 "keel:$server" "GET /health (idle)" \
    "keel:$server" "GET /health beside $LOGIN_CLIENTS logins"
}

# logins_alone SERVER: the login loop alone for DURATION; logins/s, per core, and the
# CPU time of Keel's processes per login.
logins_alone() {
  local server="$1" before after answer cores
  wait_quiet
  before="$(group_cpu_ticks "$(server_pid "$server")")"
  answer="$(client logins "$(server_url "$server")" "$(seconds_of "$DURATION")" "${LOGIN_USERS[@]}")" ||
    die "the login loop failed"
  after="$(group_cpu_ticks "$(server_pid "$server")")"
  cores="$(nproc)"
  add_note health_under_logins "$server" "$(python3 - "$answer" "$before" "$after" "$cores" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
answer, before, after, cores, hz = json.loads(sys.argv[1]), *map(int, sys.argv[2:])
cpu = (after - before) / hz
per_login = 1000 * cpu / answer["logins"] if answer["logins"] else float("nan")
print(f"logins alone ({answer['clients']} clients, {answer['seconds']:.0f} s): "
      f"{answer['per_second']:.1f} logins/s = {answer['per_second'] / cores:.1f} per core "
      f"({cores} cores, shared with the client and PostgreSQL); Keel CPU {per_login:.0f} ms "
      f"per login; p50 {answer['p50_ms']} ms, p99 {answer['p99_ms']} ms; statuses {answer['statuses']}")
EOF
)"
}

# seconds_of DURATION: wrk's duration ("10s", "2m", "10") in whole seconds.
seconds_of() {
  case "$1" in
    *m) echo $((${1%m} * 60)) ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
  esac
}

# ---------------------------------------------------------------- preflight
if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "wrk is missing: installing it with apt-get"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } ||
      die "could not install wrk with apt-get"
  else
    die "wrk is not installed: install it (Debian/Ubuntu: sudo apt-get install wrk) and run again"
  fi
fi
for tool in curl psql python3 openssl pgrep; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done

[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
# Only names with this prefix are ever made or dropped, so a typo cannot drop another.
[[ "$KEEL_BENCH_DB" =~ ^keel_bench_[a-z0-9_]+$ ]] ||
  die "KEEL_BENCH_DB must be keel_bench_ followed by [a-z0-9_]"
for s in $SERVERS; do
  case "$s" in uvicorn | granian | gunicorn) ;; *) die "unknown server '$s' (uvicorn granian gunicorn)" ;; esac
done
[ -n "$SERVERS" ] || die "SERVERS is empty"

if [ ! -x "$VENV/bin/keel" ]; then
  say "no .venv yet: setting it up with run.py (pinned uv, uv.lock)"
  (cd "$REPO" && python3 run.py keel --help >/dev/null) || die "could not set up $VENV"
  [ -x "$VENV/bin/keel" ] || die "$VENV/bin/keel is still missing"
fi

if [ -z "${PY:-}" ] && [ ! -x "${BENCH_VENV:-/tmp/keel-baseline-venv}/bin/python" ]; then
  say "building the floor's environment in ${BENCH_VENV:-/tmp/keel-baseline-venv} (first run only)"
fi
# shellcheck source=floor/run_baseline.sh
BENCH_LIB_ONLY=1 source "$FLOOR_DIR/run_baseline.sh" || die "could not load $FLOOR_DIR/run_baseline.sh"
set +e  # the helpers return non-zero in ordinary cases; failures are checked by hand
export BENCH_WRK_THREADS="$THREADS"  # the lua scripts split their items and tokens by thread
# Each wrk run (warm-up, measured run) loses at most CONNS tokens, those in flight when it
# stops; four times CONNS leaves every connection a token in the measured run.
REFRESH_POOL="${REFRESH_POOL:-$((CONNS * 4))}"

# The floor's database, made and seeded as run_baseline.sh's own main section does.
if ! psql "$BENCH_DSN" -Atc 'select count(*) from users' >/dev/null 2>&1; then
  say "making and seeding the floor's database ($BENCH_DSN)"
  psql "${BENCH_DSN%/*}/postgres" -Atc 'create database bench' >/dev/null 2>&1
  PGOPTIONS='-c client_min_messages=warning' psql -q "$BENCH_DSN" -f "$FLOOR_DIR/seed.sql" >/dev/null ||
    die "cannot reach or seed $BENCH_DSN"
fi

TMP="$(mktemp -d /tmp/keel-bench.XXXXXX)"
KEEL_LOG="$TMP/keel.log"  # the keel commands' output; each server logs to $TMP/<server>.log
mkdir -p "$TMP/data" "$TMP/cwd"
PG_SERVER="${BENCH_DSN%/*}"
KEEL_DSN="$PG_SERVER/$KEEL_BENCH_DB"
KEEL_DB_MADE=""
BENCH_OUT="${BENCH_OUT:-$REPO/bench/out/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$BENCH_OUT" || die "cannot write to $BENCH_OUT"
RESULTS="$BENCH_OUT/results.tsv"  # the floor's wrk_measure appends here
: >"$RESULTS"
: >"$BENCH_OUT/pairs.tsv"
: >"$BENCH_OUT/extras.tsv"

# ---------------------------------------------------------------- Keel's settings
# Production settings, as a deployment runs: KEEL_ENV=production refuses to start without
# signing keys, a secret key and a metrics token (src/keel/config.py production_problems);
# JSON log lines (to the server's log file); /metrics on behind its token. The rate limits
# are raised so that no measurement is answered 429 (logins and refreshes are the point of
# some scenarios). One worker on the in-process backends: no Redis.
openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null |
  openssl pkcs8 -topk8 -nocrypt -out "$TMP/signing-key.pem" 2>/dev/null ||
  die "could not make a P-256 signing key with openssl"
KEEL_SETTINGS=(
  KEEL_ENV=production
  "KEEL_DATABASE_URL=postgresql+asyncpg://${KEEL_DSN#postgresql://}"
  "KEEL_DATA_DIR=$TMP/data"
  KEEL_LOG_FORMAT=json
  "KEEL_METRICS_TOKEN=$(openssl rand -hex 24)"
  "KEEL_SECRET_KEY=$(openssl rand -hex 32)"
  "KEEL_AUTH_SIGNING_KEY_FILES=[\"$TMP/signing-key.pem\"]"
  KEEL_LIMIT_TOKEN_ACCOUNT=1000000/minute
  KEEL_LIMIT_TOKEN_IP=1000000/minute
  KEEL_LIMIT_REGISTER_IP=1000000/minute
  KEEL_LIMIT_EMAIL_IP=1000000/minute
)
unset PROMETHEUS_MULTIPROC_DIR  # set per server below when BENCH_METRICS_MULTIPROC=1

# keel_cli ARGS...: the keel command with Keel's settings, from an empty folder (so no
# .env applies). Other KEEL_* variables of the caller pass through (to try a setting).
keel_cli() {
  (cd "$TMP/cwd" && exec env "${KEEL_SETTINGS[@]}" "$VENV/bin/keel" "$@") </dev/null
}

# ---------------------------------------------------------------- servers
FLOOR_PID=""
FLOOR_APP=""
declare -A SERVER_PGID=()
LOOP_PIDS=()

port_busy() { curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/"; }

server_port() {
  case "$1" in
    uvicorn) echo "$KEEL_PORT" ;;
    granian) echo "$GRANIAN_PORT" ;;
    gunicorn) echo "$GUNICORN_PORT" ;;
  esac
}
server_url() { echo "http://127.0.0.1:$(server_port "$1")"; }
# Accounts, tokens and data are made through the first server of SERVERS.
setup_url() { server_url "${SERVERS%% *}"; }

# The command that serves Keel's app (factory keel.main:app_factory) with one worker.
server_command() {
  local port
  port="$(server_port "$1")"
  case "$1" in
    # What production runs: uvicorn.run with uvloop and httptools (its defaults when
    # installed), no access log of Uvicorn's own (Keel writes its own), no server header.
    uvicorn) echo "$VENV/bin/keel serve --host 127.0.0.1 --port $port --workers 1" ;;
    # --http 1: Uvicorn speaks HTTP/1.1 only, so Granian does not sniff for HTTP/2 either.
    granian) echo "$VENV/bin/granian --interface asgi --factory --loop uvloop --http 1 --workers 1 --host 127.0.0.1 --port $port --log-level warning keel.main:app_factory" ;;
    # Gunicorn's master and one Uvicorn worker (loop and http "auto": uvloop, httptools).
    gunicorn) echo "$VENV/bin/gunicorn --worker-class uvicorn_worker.UvicornWorker --workers 1 --bind 127.0.0.1:$port --log-level warning keel.main:app_factory()" ;;
  esac
}

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
  local server pid
  for pid in "${LOOP_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for server in "${!SERVER_PGID[@]}"; do stop_group "${SERVER_PGID[$server]}"; done
  SERVER_PGID=()
  SERVER_PID="$FLOOR_PID"
  stop_server
  FLOOR_PID=""
  if [ -n "$KEEL_DB_MADE" ]; then
    if pg_admin "DROP DATABASE IF EXISTS $KEEL_BENCH_DB WITH (FORCE)" 2>/dev/null; then
      say "dropped database $KEEL_BENCH_DB"
    else
      say "could not drop $KEEL_BENCH_DB: psql $PG_SERVER/postgres -c 'DROP DATABASE $KEEL_BENCH_DB'"
    fi
    KEEL_DB_MADE=""
  fi
  if [ -n "$BENCH_KEEP_LOGS" ]; then
    say "Keel's logs kept in $TMP (*.log)"
  else
    rm -rf "$TMP"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ensure_floor APP: the floor app APP serving on PORT (restarted when the other one is up).
ensure_floor() {
  local app="$1"
  if [ -n "$FLOOR_PID" ] && [ "$FLOOR_APP" = "$app" ] && kill -0 "$FLOOR_PID" 2>/dev/null; then
    return 0
  fi
  if [ -n "$FLOOR_PID" ]; then SERVER_PID="$FLOOR_PID"; stop_server; FLOOR_PID=""; fi
  port_busy "$PORT" && die "port $PORT is already in use (set PORT)"
  # The floor apps answer /json once their pool is open.
  start_server "$app:app" /json || { FLOOR_PID="$SERVER_PID"; die "floor app $app did not start"; }
  FLOOR_PID="$SERVER_PID"
  FLOOR_APP="$app"
}

# pg_admin SQL: one statement in the server's postgres database (notices left out).
pg_admin() {
  PGOPTIONS="-c client_min_messages=warning" psql -q -X "$PG_SERVER/postgres" -c "$1" >/dev/null
}

# Keel's database: made empty (dropped first if a run left it), migrated, dropped at exit.
prepare_keel_db() {
  if ! pg_admin "DROP DATABASE IF EXISTS $KEEL_BENCH_DB WITH (FORCE)" ||
    ! pg_admin "CREATE DATABASE $KEEL_BENCH_DB"; then
    die "cannot make the database $KEEL_BENCH_DB on $PG_SERVER"
  fi
  KEEL_DB_MADE=1
  keel_cli db upgrade >>"$KEEL_LOG" 2>&1 || { tail -n 20 "$KEEL_LOG" >&2; die "keel db upgrade failed"; }
}

# start_keel SERVER: Keel under SERVER on its port, in its own process group (stopped
# whole), its output (the JSON log lines) to $TMP/SERVER.log.
start_keel() {
  local server="$1" port log i pgid env=("${KEEL_SETTINGS[@]}")
  port="$(server_port "$server")"
  log="$TMP/$server.log"
  port_busy "$port" && die "port $port is already in use (set the port variables)"
  [ -n "$KEEL_DB_MADE" ] || prepare_keel_db
  if [ -n "$BENCH_METRICS_MULTIPROC" ]; then
    # A fresh folder per server, as `keel serve` makes one for its workers.
    rm -rf "$TMP/metrics-$server" && mkdir -p "$TMP/metrics-$server"
    env+=("PROMETHEUS_MULTIPROC_DIR=$TMP/metrics-$server")
  fi
  # shellcheck disable=SC2046  # the command is split into words on purpose
  (cd "$TMP/cwd" && exec env "${env[@]}" setsid $(server_command "$server")) >>"$log" 2>&1 </dev/null &
  pgid=$!
  SERVER_PGID[$server]="$pgid"
  for i in $(seq 1 150); do
    kill -0 "$pgid" 2>/dev/null || break
    if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/health")" = 200 ]; then
      say "Keel under $server is up on port $port (processes: $(pgrep -g "$pgid" | tr '\n' ' '))"
      return 0
    fi
    sleep 0.2
  done
  say "Keel under $server did not become ready on port $port; the end of its log:"
  tail -n 20 "$log" >&2
  die "Keel under $server did not start"
}

ensure_keel() {
  local pgid="${SERVER_PGID[$1]:-}"
  if [ -n "$pgid" ] && kill -0 "$pgid" 2>/dev/null; then return 0; fi
  start_keel "$1"
}

# group_cpu_ticks PGID: user + system clock ticks of every process in the group.
group_cpu_ticks() {
  local pid total=0 t
  for pid in $(pgrep -g "$1"); do
    t="$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null)" && total=$((total + t))
  done
  echo "$total"
}

# server_pid SERVER: the process group of Keel under SERVER.
server_pid() { echo "${SERVER_PGID[$1]}"; }

# worker_pid SERVER: the process that serves the requests (Gunicorn and Granian fork a
# worker): the one of the group that has used the most CPU.
worker_pid() {
  local pid best="" most=-1 t
  for pid in $(pgrep -g "$(server_pid "$1")"); do
    t="$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null)" || continue
    if [ "$t" -gt "$most" ]; then most="$t"; best="$pid"; fi
  done
  echo "$best"
}

# wait_quiet: every server of the run under 5% of a core (as the floor's wait_idle, but
# over whole process groups), at most 30 s, so that one measurement's leftovers (or a
# setup's password hashing) do not leak into the next.
wait_quiet() {
  local i a b hz pgid
  hz="$(getconf CLK_TCK)"
  for i in $(seq 1 60); do
    a=0 b=0
    for pgid in "${SERVER_PGID[@]}" $FLOOR_PID; do a=$((a + $(group_cpu_ticks "$pgid"))); done
    sleep 0.5
    for pgid in "${SERVER_PGID[@]}" $FLOOR_PID; do b=$((b + $(group_cpu_ticks "$pgid"))); done
    [ $(((b - a) * 100)) -lt $((hz * 5 / 2)) ] && return 0
  done
}

# ---------------------------------------------------------------- measuring
# measure_floor APP ENDPOINT_LABEL PATH [wrk args...]
measure_floor() {
  local app="$1" ep="$2" path="$3"
  shift 3
  ensure_floor "$app"
  wait_quiet
  SERVER_PID="$FLOOR_PID"
  wrk_measure "$app" "$ep" "http://127.0.0.1:$PORT$path" "$@"
}

# measure_keel SERVER ENDPOINT_LABEL PATH [wrk args...]
measure_keel() {
  local server="$1" ep="$2" path="$3"
  shift 3
  check_lua_inputs "$@"
  ensure_keel "$server"
  wait_quiet
  SERVER_PID="$(worker_pid "$server")"
  wrk_measure "keel:$server" "$ep" "$(server_url "$server")$path" "$@"
}

# check_lua_inputs [wrk args...]: the data file each of our lua scripts reads is there.
# (wrk prints a script's error and goes on with plain requests to its URL, so a missing
# file would be measured, not reported.)
check_lua_inputs() {
  local var
  case "$*" in
    *keel_item_read.lua*) var=BENCH_ITEM_IDS ;;
    *keel_item_patch.lua*) var=BENCH_PATCH_STATE ;;
    *keel_refresh.lua*) var=BENCH_REFRESH_POOL ;;
    *) return 0 ;;
  esac
  [ -s "${!var:-}" ] || die "the lua script's input \$$var (${!var:-unset}) is missing or empty"
}

# add_pair SCENARIO SERVER TARGET P99_LIMIT DEN_APP DEN_EP NUM_APP NUM_EP (once each)
add_pair() {
  local line
  line="$(printf '%s\t' "$@")"
  line="${line%$'\t'}"
  grep -qxF -- "$line" "$BENCH_OUT/pairs.tsv" || echo "$line" >>"$BENCH_OUT/pairs.tsv"
}

# add_note SCENARIO SERVER TEXT: a line printed under this round in the scenario's table.
add_note() {
  printf '%s\t%s\t%s\t%s\n' "$LABEL" "$1" "$2" "$3" >>"$BENCH_OUT/extras.tsv"
  echo "  ($1, $2: $3)"
}

keel_versions() {
  "$VENV/bin/python" - <<'EOF'
from importlib.metadata import version, PackageNotFoundError
out = []
for p in ("keel", "uvicorn", "uvloop", "httptools", "granian", "gunicorn", "uvicorn-worker",
          "starlette", "fastapi", "pydantic", "sqlalchemy", "asyncpg", "argon2-cffi",
          "structlog", "prometheus-client", "orjson"):
    try:
        out.append(f"{p}={version(p)}")
    except PackageNotFoundError:
        out.append(f"{p}=absent")
print("# keel venv: " + " ".join(out))
EOF
}

# ---------------------------------------------------------------- run
read -r -a selected <<<"${SCENARIOS:-${ALL_SCENARIOS[*]}}"
for s in "${selected[@]}"; do
  declare -F "scenario_$s" >/dev/null || die "unknown scenario '$s' (known: ${ALL_SCENARIOS[*]})"
done

{
  echo "# keel bench $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(nproc) cores  $(uname -sr)  load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# keel commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD -- src 2>/dev/null || echo ' (src modified)')"
  echo "# floor: bench/floor (raw_starlette, fastapi_hello; one uvicorn worker, flags below)"
  print_versions
  keel_versions
  for s in $SERVERS; do
    cmd="$(server_command "$s")"
    echo "# keel under $s: ${cmd//"$REPO/"/}"  # paths relative to the repository
  done
  echo "# keel settings: KEEL_ENV=production, JSON log lines to a file, metrics on (token set), signing key file, secret key, KEEL_LIMIT_*=1000000/minute; PostgreSQL database $KEEL_BENCH_DB, no Redis; PROMETHEUS_MULTIPROC_DIR ${BENCH_METRICS_MULTIPROC:+set (a fresh folder per server)}${BENCH_METRICS_MULTIPROC:-unset (as keel serve --workers 1)}"
  echo "# rounds: $ROUNDS  scenarios: ${selected[*]}  servers: $SERVERS"
} | tee "$BENCH_OUT/summary.txt"

# Not piped (a pipe would run it in a subshell and lose the servers' ids); every figure
# is in results.tsv and in the tables below.
for ROUND in $(seq 1 "$ROUNDS"); do
  echo "## round $ROUND/$ROUNDS"
  for s in "${selected[@]}"; do
    # The first column of results.tsv: a floor app is measured once per scenario.
    LABEL="round$ROUND.$s"
    "scenario_$s"
  done
done

echo "# load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$BENCH_OUT/summary.txt"
if awk -F'\t' '$4=="NA"{bad=1} END{exit !bad}' "$RESULTS"; then
  say "some measurements failed (NA): see $RESULTS"
fi

python3 "$REPO/bench/report.py" "$BENCH_OUT" ${BENCH_STRICT:+--strict} | tee -a "$BENCH_OUT/summary.txt"
status=$?
say "results in $BENCH_OUT (results.tsv, pairs.tsv, extras.tsv, summary.txt)"
exit "$status"
