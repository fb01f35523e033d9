"""``make demo``'s program on the real broker: the quick model trained ahead (as tools/demo.sh
does while Kafka starts); a first run (no default model) streams with it, trains the default
in the background, promotes it live and checks both versions against offline; a second run
finds the default and streams with it alone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from fmnist_faust.core import model
from support import free_port

# The default model as fmnist-train would make it, only tiny: seconds instead of minutes.
TINY_DEFAULT = "--subset 3000 --hidden 16 --augment none --max-iter 3"


def _demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(
        FMNIST_MODEL_PATH=str(tmp_path / "models" / "fmnist-mlp.joblib"),
        FMNIST_WEB_PORT=str(free_port()),
        FMNIST_WORKER_DATADIR=str(tmp_path / "worker"),
    )
    env.pop("FMNIST_MODEL_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "fmnist_faust.demo", "--count", "400", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_first_run_promotes_the_trained_default_then_a_second_run_uses_it(kafka_bootstrap: str, tmp_path: Path) -> None:
    ahead = _demo(tmp_path, "--quick-model-only")
    assert ahead.returncode == 0, ahead.stdout + ahead.stderr
    trained_ahead = model.verify(tmp_path / "models" / "fmnist-mlp-quick.joblib")["model_version"]

    first = _demo(tmp_path, "--train-args", TINY_DEFAULT)
    print(first.stdout)
    assert first.returncode == 0, first.stdout + first.stderr
    quick, default = re.findall(r"^(mlp-[0-9a-f]{12}) streamed accuracy: .* -> identical$", first.stdout, re.M)
    assert quick == trained_ahead != default
    assert f"quick model {quick}" in first.stdout and f"$ fmnist-model promote {default}" in first.stdout
    assert re.search(rf"serves {default} [0-9.]+ s later", first.stdout)
    assert "the sum of the versions" in first.stdout and "epoch 3/3" in first.stdout

    second = _demo(tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert re.findall(r"^(mlp-[0-9a-f]{12}) streamed accuracy: .* -> identical$", second.stdout, re.M) == [default]
    assert "quick model" not in second.stdout and "promote" not in second.stdout
