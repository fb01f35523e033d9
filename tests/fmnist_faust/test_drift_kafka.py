"""Drift on the real broker (markers ``kafka``, ``chaos``): the test split, then the same
images inverted, then one class, in 10-s windows of record time, through one worker serving
a live and a shadow version; the worker is SIGKILLed and restarted while it counts.

Then, for both versions: PSI stays under the warning level on test-split windows and crosses
the alert level within two windows of each change; ``/metrics`` carries the newest window's
PSI; and every window's counts equal the histograms of the same images classified offline,
to the image (the counts move with the score rows: a replay after the kill counts nothing
twice). ``DRIFT_FIGURE_JSON=path`` saves the ``/drift/`` document (the docs' figure).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fmnist_faust.core import drift
from fmnist_faust.core.model import load_classifier
from support import drift_records, drift_stream, model_cli, offline_drift, produce_at, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]
WINDOW = 10


def test_drift_crosses_within_two_windows_and_counts_exactly_through_a_sigkill(
    start_worker: Callable, worker_env: dict[str, str], kafka_bootstrap: str, test_split, rollout_models
) -> None:
    models = rollout_models
    v0, v1, _ = models.versions
    env = dict(worker_env, FMNIST_SESSION_TIMEOUT="8")
    serving = {
        "FMNIST_SESSION_TIMEOUT": "8",  # the restarted worker rejoins within seconds
        "FMNIST_MODEL_DIR": str(models.trusted),
        "FMNIST_MODEL_PATH": str(models.default(models.trusted)),
        "FMNIST_WINDOW_SECONDS": str(WINDOW),
    }
    worker = start_worker(**serving)
    port = str(worker.port)
    done = model_cli(env, "shadow", v1, directory=models.trusted)
    assert done.returncode == 0, done.stderr
    wait_until(lambda: worker.get("/stats/").json()["models"]["shadow"] == v1, 30, what="the worker shadowing v1")

    windows = drift_stream(test_split)
    base = (int(time.time()) // WINDOW - 2 * len(windows)) * WINDOW  # past, whole windows
    produce_at(kafka_bootstrap, env["FMNIST_IMAGES_TOPIC"], drift_records(windows, base, WINDOW))
    total = sum(len(window.ids) for window in windows)

    killed_at = wait_until(lambda: worker.accuracy()["images"], 60, interval=0.05, what="the first images counted")
    worker.stop(signal.SIGKILL)
    worker = start_worker(**serving, FMNIST_WEB_PORT=port)
    wait_until(lambda: worker.accuracy()["images"] >= total, 90, what=f"all {total} images counted")
    report = worker.accuracy()
    document = worker.get("/drift/").json()
    if os.environ.get("DRIFT_FIGURE_JSON"):  # the rows named by what the test sent in them
        named = json.loads(json.dumps(document))
        for part in named["models"].values():
            for row, window in zip(part["windows"], windows):
                row["kind"] = window.kind
        Path(os.environ["DRIFT_FIGURE_JSON"]).write_text(json.dumps({"backend": "kafka", "drift": named}))

    assert report["images"] == total and report["by_model"][v0]["shadow"] is None
    starts = [base + w * WINDOW for w in range(len(windows))]
    for version, role, index in ((v0, "live", 0), (v1, "shadow", 1)):
        part = document["models"][version]
        print(f"DRIFT kafka {role} {version} (SIGKILL at {killed_at} of {total} images):")
        for row, window in zip(part["windows"], windows):
            print(f"  {window.kind:<22} {row['images']:>5} images  psi {row['psi']}")
        assert part["role"] == role and part["reference"] == "ok"
        assert [row["start"] for row in part["windows"]] == starts
        classifier = load_classifier(models.trusted / f"m{index}.joblib")
        for row, window in zip(part["windows"], windows):  # exact: the histograms offline
            assert row["counts"] == offline_drift(classifier, window.images), (version, window.kind)
        psi = [row["psi"] for row in part["windows"]]
        for w in (0, 1, 4):  # the test split
            assert max(psi[w].values()) < drift.PSI_WARN, (version, w, psi[w])
        assert max(psi[2]["intensity"], psi[3]["intensity"]) > drift.PSI_ALERT  # inverted: within two windows
        assert psi[3]["intensity"] > drift.PSI_ALERT and psi[3]["class"] > drift.PSI_ALERT
        assert psi[6]["class"] > drift.PSI_ALERT  # one class
        assert part["latest"]["start"] == starts[-1]

    gauges = {
        (s.labels["signal"], s.labels["model_version"], s.labels["role"]): s.value
        for family in text_string_to_metric_families(worker.get("/metrics").text)
        if family.name == "fmnist_drift_psi"
        for s in family.samples
    }
    for version in (v0, v1):
        latest = document["models"][version]["latest"]["psi"]
        role = document["models"][version]["role"]
        assert {signal: gauges[(signal, version, role)] for signal in latest} == latest
