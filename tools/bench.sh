#!/usr/bin/env bash
# `make bench` / `make bench-smoke`: run the benchmark harness (bench/run.py) against the
# local Kafka broker and Pub/Sub emulator. Starts them if they are not running and stops
# them afterwards only if this script started them.
#   tools/bench.sh            # full run -> bench/results/latest.{json,md,png}
#   tools/bench.sh --smoke    # a few seconds per stage, tiny counts
# Extra arguments go to `python -m bench.run` (see --help).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

# Only services this script starts are stopped (a user's KAFKA_BOOTSTRAP_SERVERS /
# PUBSUB_EMULATOR_HOST means "use mine": nothing is started for it).
started_here=""
[ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ] && started_here="$started_here $(tools/services.sh missing | grep -x kafka || true)"
[ -z "${PUBSUB_EMULATOR_HOST:-}" ] && started_here="$started_here $(tools/services.sh missing | grep -x pubsub || true)"
cleanup() { for name in $started_here; do tools/services.sh stop "$name" || true; done; }
trap cleanup EXIT
tools/services.sh start
# shellcheck disable=SC1091
source .services.env
.venv/bin/python -m bench.run "$@"
