#!/usr/bin/env bash
# Run the freeze tests (tests/fmnist_faust/test_freeze_kafka.py) again and again, locally,
# to show images are never lost when the broker or a worker hangs; prints one line per run.
#   tools/freeze-loop.sh RUNS [FREEZE_IMAGES FREEZE_SESSION_S FREEZE_SECONDS]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
runs=${1:-5}
export FREEZE_IMAGES=${2:-4000} FREEZE_SESSION_S=${3:-10}
[ -n "${4:-}" ] && export FREEZE_SECONDS=$4
# shellcheck disable=SC1091
source .services.env
passed=0
for run in $(seq 1 "$runs"); do
  if .venv/bin/python -m pytest -q -p no:randomly tests/fmnist_faust/test_freeze_kafka.py >".run/freeze-loop-$run.log" 2>&1; then
    passed=$((passed + 1)); echo "run $run: passed"
  else
    echo "run $run: FAILED (.run/freeze-loop-$run.log)"
  fi
done
echo "freeze loop: $passed/$runs runs passed (images $FREEZE_IMAGES, session ${FREEZE_SESSION_S}s, freeze ${FREEZE_SECONDS:-session+15}s)"
