#!/usr/bin/env bash
# make demo-pubsub (via tools/demo.sh pubsub): the 10,000 test images through the Pub/Sub
# bridge on Google's local emulator; see pubsub_bridge/demo.py for what it shows.
# Uses $PUBSUB_EMULATOR_HOST if set, else the emulator tools/services.sh runs, else starts
# it; stops it at the end only if this script started it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=tools/lib.sh
source tools/lib.sh
start_services pubsub
export GOOGLE_CLOUD_PROJECT=${GOOGLE_CLOUD_PROJECT:-fmnist-local}
.venv/bin/python -m pubsub_bridge.demo "$@"
