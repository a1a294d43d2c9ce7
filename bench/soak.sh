#!/usr/bin/env bash
# The soak (bench/soak.py): `keel serve --workers 2` and `keel worker` in production
# settings on PostgreSQL + Redis, under mixed traffic (logins, refreshes, item reads and
# writes, exports, uploads and downloads, realtime) for 600 s after a 60 s warm-up; every
# acknowledged write read back at the end; RSS after warm-up against the end.
#
#   bash bench/soak.sh                      # the ten-minute soak (about 13 minutes)
#   bash bench/soak.sh --duration 90        # a short run
#
# Makes Keel's .venv first when it is missing; `--help` lists the settings, `--help-long`
# describes the soak. Needs psql, PostgreSQL (trust auth) and Redis on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/keel ]]; then
    python3 run.py keel --help >/dev/null
fi
exec .venv/bin/python bench/soak.py "$@"
