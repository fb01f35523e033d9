#!/usr/bin/env bash
# make demo-pubsub (via tools/demo.sh pubsub): the 10,000 test images through the Pub/Sub
# bridge on Google's local emulator; see pubsub_bridge/demo.py for what it shows.
# Uses $PUBSUB_EMULATOR_HOST if set, else the emulator tools/services.sh runs, else starts
# it; stops it at the end only if this script started it and nothing else was running.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

emulator_port() { tools/services.sh status | sed -n 's/^pubsub: running (pid [0-9]*, port \([0-9]*\)).*/\1/p'; }

stop_services=0
if [ -z "${PUBSUB_EMULATOR_HOST:-}" ]; then
  port=$(emulator_port)
  if [ -z "$port" ]; then
    if ! tools/services.sh status | grep -q "kafka: running"; then stop_services=1; fi
    tools/services.sh start pubsub
    port=$(emulator_port)
    [ -n "$port" ] || { echo "demo-pubsub: the Pub/Sub emulator did not start" >&2; exit 1; }
  fi
  export PUBSUB_EMULATOR_HOST=127.0.0.1:$port
fi
export GOOGLE_CLOUD_PROJECT=${GOOGLE_CLOUD_PROJECT:-fmnist-local}

cleanup() {
  if [ "$stop_services" = 1 ]; then
    tools/services.sh stop >/dev/null 2>&1 || true
    echo "demo-pubsub: stopped the services it started"
  fi
}
trap cleanup EXIT
.venv/bin/python -m pubsub_bridge.demo "$@"
