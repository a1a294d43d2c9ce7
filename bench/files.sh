#!/usr/bin/env bash
# The file-transfer benchmark (bench/files.py): 1 GiB up and down through `keel serve`,
# local folder and S3 (moto), server RSS sampled, local upload against `cp`.
#
#   bash bench/files.sh                        # FILE_MB=1024 ROUNDS=3 BACKENDS="local s3"
#   FILE_MB=256 ROUNDS=1 BACKENDS=local bash bench/files.sh
#
# Makes Keel's .venv first when it is missing; the settings are files.py's (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/keel ]]; then
    python3 run.py keel --help >/dev/null
fi
exec .venv/bin/python bench/files.py "$@"
