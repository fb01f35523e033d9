#!/usr/bin/env bash
# Run the whole pytest suite against real services: start them unless they are already
# running, and stop the ones this run started even when tests fail.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
started_here=0
if ! tools/services.sh status | grep -q "kafka: running"; then started_here=1; fi
cleanup() { if [ "$started_here" = 1 ]; then tools/services.sh stop || true; fi; }
trap cleanup EXIT
tools/services.sh start
# shellcheck disable=SC1091
source .services.env
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" = 5 ]; then echo "run-tests: pytest collected no tests: failing" >&2; fi
exit "$status"
