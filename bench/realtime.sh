#!/usr/bin/env bash
# The realtime benchmark (bench/realtime.py): 5,000 idle WebSocket connections on one
# worker (RSS per connection, idle CPU), then the delivery latency of room messages to
# 1,000 subscribers over two workers on PostgreSQL + Redis.
#
#   bash bench/realtime.sh                              # both phases, about 2 minutes
#   PHASES=latency CLIENTS=lean PYSPY=1 bash bench/realtime.sh
#
# Makes Keel's .venv first when it is missing; the settings are realtime.py's (see its
# --help). Needs psql and PostgreSQL (trust auth) and Redis on 127.0.0.1 for the latency
# phase.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/keel ]]; then
    python3 run.py keel --help >/dev/null
fi
exec .venv/bin/python bench/realtime.py "$@"
