#!/usr/bin/env bash
# What each part of Keel costs on GET /health: serve_variant.py's variants, each measured
# with the floor's wrk_measure (bench/floor/run_baseline.sh) right after raw_starlette /json
# and fastapi_hello /json. Run bench/run.sh once first (it makes .venv, the floor's venv and
# the bench database).
#
#   bash bench/profile/ablate.sh
#   VARIANTS="full noredact shortcutobs" ROUNDS=1 bash bench/profile/ablate.sh
# Env: VARIANTS, ROUNDS=2, DURATION=8s, WARMUP=2s, ports PORT=8101 (raw_starlette),
#      FASTAPI_PORT=8104 (fastapi_hello), VARIANT_PORT=8103 (the variant).
# Output: bench/out/ablate-<UTC time>/.
# shellcheck source-path=SCRIPTDIR
set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
FLOOR_DIR="$REPO/bench/floor"
VARIANTS="${VARIANTS:-full noredact noaccesslog noobs nogzip nosec noobs+nosec+nogzip nomw shortcutlog shortcutlog+noredact shortcutobs shortcut}"
ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-8s}" WARMUP="${WARMUP:-2s}"
PORT="${PORT:-8101}"
FASTAPI_PORT="${FASTAPI_PORT:-8104}"
VARIANT_PORT="${VARIANT_PORT:-8103}"
[ -x "$REPO/.venv/bin/python" ] || { echo "run bash bench/run.sh first" >&2; exit 2; }
# shellcheck source=../floor/run_baseline.sh
BENCH_LIB_ONLY=1 source "$FLOOR_DIR/run_baseline.sh" || exit 2
OUT="$REPO/bench/out/ablate-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
RESULTS="$OUT/results.tsv"
TMP="$(mktemp -d /tmp/keel-ablate.XXXXXX)"
BASE="" FAPI="" V=""
cleanup() {
  [ -n "$V" ] && { kill -TERM -- "-$V" 2>/dev/null; wait "$V" 2>/dev/null; }
  for p in $BASE $FAPI; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_server raw_starlette:app /json || exit 1
BASE=$SERVER_PID
PORT="$FASTAPI_PORT" start_server fastapi_hello:app /json || exit 1
FAPI=$SERVER_PID

for r in $(seq 1 "$ROUNDS"); do
  # shellcheck disable=SC2034  # read by the floor's wrk_measure
  LABEL="round$r"
  SERVER_PID=$BASE; wrk_measure raw_starlette "GET /json" "http://127.0.0.1:$PORT/json"
  SERVER_PID=$FAPI; wrk_measure fastapi_hello "GET /json" "http://127.0.0.1:$FASTAPI_PORT/json"
  for v in $VARIANTS; do
    mkdir -p "$TMP/$v"
    ( cd "$REPO" && KEEL_DATA_DIR="$TMP/$v" KEEL_LOG_FORMAT=json \
        exec setsid .venv/bin/python bench/profile/serve_variant.py "$VARIANT_PORT" "$v" ) >"$TMP/$v.log" 2>&1 &
    V=$!
    for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$VARIANT_PORT/health" && break; sleep 0.2; done
    SERVER_PID=$V; wrk_measure "keel:$v" "GET /health" "http://127.0.0.1:$VARIANT_PORT/health"
    kill -TERM -- "-$V"; wait "$V" 2>/dev/null; V=""
    rm -rf "${TMP:?}/$v" "$TMP/$v.log"
  done
done
echo
echo "# each row as a ratio to raw_starlette /json of the same round; us/req = 1e6 / req/s"
awk -F'\t' '$2=="raw_starlette"{raw[$1]=$4} {row[NR]=$0}
  END{for(i=1;i<=NR;i++){split(row[i],a,"\t");
    printf "%-7s %-28s %10s req/s  ratio %.2f  %4.0f us/req  p99 %s ms\n", a[1], a[2], a[4], a[4]/raw[a[1]], 1e6/a[4], a[6]}}' "$RESULTS" |
  tee "$OUT/summary.txt"
