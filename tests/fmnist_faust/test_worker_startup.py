"""A worker with no valid model stops at start-up with a clear message (real broker)."""

import subprocess
import sys

import pytest

from support import ROOT

pytestmark = pytest.mark.kafka


def test_missing_model_stops_the_worker_at_start(worker_env: dict[str, str], tmp_path) -> None:
    env = dict(worker_env, FMNIST_MODEL_PATH=str(tmp_path / "absent.joblib"))
    done = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "fmnist_faust", "worker", "-l", "info"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "cannot load the model" in done.stdout + done.stderr
    assert "model file missing (run `make model`)" in done.stdout + done.stderr
