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
# shellcheck source=tools/lib.sh
source tools/lib.sh
start_services kafka pubsub
.venv/bin/python -m bench.run "$@"
