#!/usr/bin/env bash
# Run the whole pytest suite against real services: start them unless they are already
# running, and stop the ones this run started even when tests fail.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
started_here=$(tools/services.sh missing)
cleanup() { for name in $started_here; do tools/services.sh stop "$name" || true; done; }
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
