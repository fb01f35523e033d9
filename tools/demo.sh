#!/usr/bin/env bash
# make demo / make demo-pubsub: start what is missing, run the demo, stop what we started.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
backend=${1:-kafka}
if [ "$backend" = pubsub ]; then exec tools/demo_pubsub.sh "${@:2}"; fi
# shellcheck source=tools/lib.sh
source tools/lib.sh
# A first run's quick model trains while Kafka starts: the first result comes its seconds sooner.
.venv/bin/python -m fmnist_faust.demo --quick-model-only &
quick=$!
start_services kafka
wait "$quick"
.venv/bin/python -m fmnist_faust.demo "${@:2}"
