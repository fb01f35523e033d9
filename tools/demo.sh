#!/usr/bin/env bash
# make demo / make demo-pubsub: start what is missing, run the demo, stop what we started.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
backend=${1:-kafka}
if [ "$backend" = pubsub ]; then exec tools/demo_pubsub.sh; fi

started_here=""
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  case "$(tools/services.sh missing)" in *kafka*) started_here=kafka ;; esac
  tools/services.sh start kafka
  # shellcheck disable=SC1091
  source .services.env
fi
cleanup() { if [ -n "$started_here" ]; then tools/services.sh stop kafka || true; fi; }
trap cleanup EXIT
.venv/bin/python -m fmnist_faust.demo "${@:2}"
