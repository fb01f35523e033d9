"""`make bench-smoke` in a test: the harness runs every stage against the real services.

Not a performance test (no figure is compared with a target): it only proves the harness
still works end to end and writes a complete result, so `make bench` never rots.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT

pytestmark = [pytest.mark.kafka, pytest.mark.pubsub, pytest.mark.timeout(330)]

RATE_STAGES = ("ceiling", "naive", "kafka", "pubsub", "kafka_batched", "peers")


def test_bench_smoke_writes_every_stage(
    kafka_bootstrap: str, pubsub_emulator: str, tiny_model: Path, tmp_path: Path
) -> None:
    env = dict(
        os.environ,
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        PUBSUB_EMULATOR_HOST=pubsub_emulator,
        FMNIST_MODEL_PATH=str(tiny_model),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=320,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    result = json.loads((tmp_path / "latest.json").read_text())
    assert result["mode"] == "smoke"
    for stage in RATE_STAGES:
        assert "error" not in result[stage], result[stage].get("traceback")
        assert result[stage]["images_per_s"] > 0, stage
    ceiling = result["ceiling"]
    assert ceiling["single_image_per_s"] > 0 and ceiling["classify_batch_per_s"] > 0

    kafka = result["kafka"]
    assert kafka["table_confirmed_images_per_s"] > 0 and kafka["concurrent_images_per_s"] > 0
    assert kafka["peak_rss_mb"] > 0 and kafka["ready_s_empty_changelog"] > 0
    cpu = kafka["worker_cpu_ms_per_image"]
    assert cpu is None or cpu > 0  # None: all counted by the worker's first answer
    for probe in kafka["diagnostics"].values():
        assert probe["images_per_s"] > 0
    latency = kafka["latency"]
    for phase in ("rate_1000", "rate_5000", "saturation"):
        measured = latency[phase]["to_prediction_published_ms"]
        assert measured["n"] == latency[phase]["sent"], phase  # every image came back
        assert measured["p50"] > 0 and measured["p99"] >= measured["p50"]
    assert latency["rate_1000"]["consumer_observed_ms"]["p99"] > 0

    per_record = result["per_record"]  # the worker vs Faust's probes on one topic, and its p99 at 1,000/s
    assert "error" not in per_record, per_record.get("traceback")
    assert all(per_record["images_per_s"][reader] > 0 for reader in ("worker", "noop", "forward"))
    assert per_record["ratio_to_forward"] > 0 and per_record["p99_ms_at_1000"] > 0

    bridge = result["bridge"]
    if bridge.get("available"):
        assert bridge["images_per_s"] > 0 and bridge["peak_rss_mb"] > 0 and bridge["ready_s"] > 0
        assert result["ratios"]["bridge_over_raw"] > 0
    else:  # only when pubsub_bridge is missing: never a made-up number
        assert bridge["reason"].startswith("not measured"), bridge
    batched = result["bridge_batched"]
    if batched.get("available"):
        assert batched["images_per_s"] > 0 and batched["predictions_read"] == batched["images"]
    assert result["kafka_batched"]["predictions_read"] == result["kafka_batched"]["images"]
    assert result["ratios"]["kafka_over_naive"] > 0 and result["ratios"]["kafka_over_ceiling"] > 0

    multistream = result["bridge_multistream"]
    assert "error" not in multistream, multistream.get("traceback")
    assert multistream["streams"] > 1 and multistream["images_per_s"] > 0
    assert multistream["raw_single_stream_images_per_s"] > 0 and multistream["ratio"] > 0
    two = result["two_workers"]
    assert "error" not in two, two.get("traceback")
    assert two["partitions"] >= 2 and two["images_per_s"] > 0 and two["one_worker_images_per_s"] > 0
    assert sum(two["two_workers"]["images_classified_by_worker"]) >= two["images"], "the group counted them all"
    assert result["ratios"]["two_workers_over_one"] > 0
    peers = result["peers"]  # bytewax and quix-streams on the worker's job; their predictions checked offline
    assert all(peers[name]["images_per_s"] > 0 for name in ("worker", "bytewax", "quixstreams"))
    assert peers["worker_over_bytewax"] > 0 and peers["worker_over_classify_batch"] > 0

    markdown = (tmp_path / "latest.md").read_text()
    assert "(3)/(2)" in markdown and "(5)/(4)" in markdown and "`bridge_multistream`" in markdown
    assert "(8)/(3)" in markdown and "`kafka_batched`" in markdown
    assert (tmp_path / "latest.png").stat().st_size > 10_000
