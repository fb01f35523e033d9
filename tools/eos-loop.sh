#!/usr/bin/env bash
# Run the exactly-once fault test (tests/fmnist_faust/test_exactly_once_kafka.py) again and
# again, locally, on a broker this tree's tools/services.sh started (the test freezes it);
# prints one line per run.
#   tools/eos-loop.sh RUNS [EOS_IMAGES EOS_KILLS EOS_SESSION_S EOS_FREEZE_S]
#   e.g. tools/eos-loop.sh 3 10000 5 10 20    # the full run: 10,000 images, five SIGKILLs
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
runs=${1:-3}
export EOS_IMAGES=${2:-10000} EOS_KILLS=${3:-5} EOS_SESSION_S=${4:-10}
[ -n "${5:-}" ] && export EOS_FREEZE_S=$5
# shellcheck disable=SC1091
source .services.env
passed=0
for run in $(seq 1 "$runs"); do
  if .venv/bin/python -m pytest -q -p no:randomly tests/fmnist_faust/test_exactly_once_kafka.py >".run/eos-loop-$run.log" 2>&1; then
    passed=$((passed + 1)); echo "run $run: passed"
  else
    echo "run $run: FAILED (.run/eos-loop-$run.log)"
  fi
done
echo "exactly-once loop: $passed/$runs runs passed (images $EOS_IMAGES, kills $EOS_KILLS, session ${EOS_SESSION_S}s, freeze ${EOS_FREEZE_S:-session+4}s)"
