#!/usr/bin/env bash
# `make soak`: the long-run harness (bench/soak.py) against the local Kafka broker and
# Pub/Sub emulator. Starts them if they are not running and stops them afterwards only if
# this script started them (like tools/bench.sh).
#   tools/soak.sh                                   # 2,000,000 worker / 300,000 bridge images
#   SOAK_WORKER_IMAGES=200000 SOAK_BRIDGE_IMAGES=50000 FMNIST_DEDUPE_SECONDS=30 tools/soak.sh
# Extra arguments go to `python -m bench.soak` (see --help). Results: bench/results/soak.{json,md,png}.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

started_here=""
[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ] && started_here="$started_here $(tools/services.sh missing | grep -x kafka || true)"
[ -z "${PUBSUB_EMULATOR_HOST:-}" ] && started_here="$started_here $(tools/services.sh missing | grep -x pubsub || true)"
cleanup() { for name in $started_here; do tools/services.sh stop "$name" || true; done; }
trap cleanup EXIT
tools/services.sh start
# shellcheck disable=SC1091
source .services.env
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
.venv/bin/python -m bench.soak "$@"
