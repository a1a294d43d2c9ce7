#!/usr/bin/env bash
# Server comparison: the same Keel app (factory keel.main:app_factory, production settings,
# one worker) under Uvicorn (`keel serve`: uvloop + httptools), Granian (--interface asgi
# --factory --loop uvloop) and Gunicorn with uvicorn_worker.UvicornWorker, each measured
# right after the floor in the same rounds, the servers' order rotating from round to round.
#
#   bash bench/servers.sh
#   SCENARIOS="health item users_me items_list" ROUNDS=2 bash bench/servers.sh
#
# It is bench/run.sh with other defaults: SERVERS="uvicorn granian gunicorn" and
# SCENARIOS="health item users_me"; every other setting of run.sh applies (ports:
# KEEL_PORT=8102 for Uvicorn, GRANIAN_PORT=8103, GUNICORN_PORT=8104; the floor on PORT=8101).
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export SERVERS="${SERVERS:-uvicorn granian gunicorn}"
export SCENARIOS="${SCENARIOS:-health item users_me}"
exec bash "$HERE/run.sh" "$@"
