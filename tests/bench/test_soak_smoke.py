"""A tiny `make soak` in a test: the harness runs end to end against the real services.

Not a performance test (no figure is compared with a target): it proves the harness
writes a complete result and that the totals are exact to the image, before and after
the restarts, so `make soak` never rots.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT

pytestmark = [pytest.mark.kafka, pytest.mark.pubsub, pytest.mark.timeout(600)]


def test_soak_smoke_writes_the_result_with_exact_totals(
    kafka_bootstrap: str, pubsub_emulator: str, tiny_model: Path, tmp_path: Path
) -> None:
    env = dict(
        os.environ,
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        PUBSUB_EMULATOR_HOST=pubsub_emulator,
        FMNIST_MODEL_PATH=str(tiny_model),
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.soak",
            "--worker-images",
            "3000",
            "--bridge-images",
            "1000",
            "--horizon",
            "5",
            "--sample-seconds",
            "0.5",
            "--restart",
            "worker",  # a bridge restart costs 20-60 s on the emulator (docs/long-runs.md); make soak measures it
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    result = json.loads((tmp_path / "soak.json").read_text())
    assert result["plan"]["worker_images"] == 3000 and result["plan"]["bridge_images"] == 1000
    for side, n in (("worker", 3000), ("bridge", 1000)):
        data = result[side]
        assert data["totals_before_restart"]["exact"] and data["totals_before_restart"]["images"] == n
        assert data["samples"] and all(s["rss_mb"] > 0 for s in data["samples"])
    worker = result["worker"]
    assert worker["totals_after_restart"]["exact"] and worker["totals_after_restart"]["images"] == 3000 + 1000
    assert worker["restart"]["restart_to_first_new_s"] > 0
    assert worker["samples"][-1]["images"] == 3000 + 1000  # the last sample is after the restart
    assert "restart" not in result["bridge"]
    worker_samples = result["worker"]["samples"]
    assert any(sum(s["changelog_records"].values()) > 0 for s in worker_samples)
    bridge_samples = result["bridge"]["samples"]
    assert all(s["store_bytes"] > 0 and s["store_rows"] is not None for s in bridge_samples)
    assert result["bridge"]["pruned_before_restart"] + result["bridge"]["pruned_after_restart"] >= 1  # 5 s horizon

    figures = result["figures"]
    assert figures["totals_exact"] is True
    assert figures["worker_rss_growth_mb"] is not None and figures["bridge_store_rows_max"] > 0
    assert "| totals exact to the image" in (tmp_path / "soak.md").read_text()
    assert (tmp_path / "soak.png").stat().st_size > 10_000
