#!/usr/bin/env bash
# `make soak`: the long-run harness (bench/soak.py) against the local Kafka broker and
# Pub/Sub emulator. Starts them if they are not running and stops them afterwards only if
# this script started them (tools/lib.sh).
#   tools/soak.sh                                   # 2,000,000 worker / 300,000 bridge images
#   SOAK_WORKER_IMAGES=200000 SOAK_BRIDGE_IMAGES=50000 FMNIST_DEDUPE_SECONDS=30 tools/soak.sh
# Extra arguments go to `python -m bench.soak` (see --help). Results: bench/results/soak.{json,md,png}.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=tools/lib.sh
source tools/lib.sh
start_services kafka pubsub
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
.venv/bin/python -m bench.soak "$@"
