#!/usr/bin/env bash
# Lint, format check, type check and the docs site's strict build, then the whole pytest
# suite against real services: start them unless they are already running, and stop the
# ones this run started even when tests fail.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=tools/lib.sh
source tools/lib.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet
start_services kafka pubsub
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" = 5 ]; then echo "run-tests: pytest collected no tests: failing" >&2; fi
exit "$status"
