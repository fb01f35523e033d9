"""Drift on the real emulator (markers ``pubsub``, ``chaos``): the Kafka test's stream (test
split, the same images inverted, one class) through a bridge serving a live and a shadow
version, SIGKILLed and restarted while it counts the first half-inverted part.

Pub/Sub sets the publish time, so each part of the stream is published right after a window
boundary (2-s windows) and its windows are found by the time it was published in. Then, for
both versions: test-split windows stay under the warning level, the inverted and one-class
parts cross the alert level within two windows, each part's counts equal its histograms
offline (what the dead bridge had leased comes back and counts once), and ``/metrics``
carries the newest window's PSI.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge_helpers import Bridge
from fmnist_faust.client import MainManager
from fmnist_faust.config import Settings, load_settings
from fmnist_faust.core import drift
from fmnist_faust.core.model import load_classifier
from pubsub_bridge.admin import setup
from support import drift_stream, model_cli, offline_drift

pytestmark = [pytest.mark.pubsub, pytest.mark.chaos]
WINDOW = 2
PER_RECORD = 50
KILL_AFTER = 3  # parts published before the SIGKILL: the third (half inverted) is being counted


def test_bridge_drift_crosses_within_two_windows_and_counts_exactly(
    pubsub_setup: Settings, start_bridge: Callable[..., Bridge], bridge_env: dict[str, str], test_split, rollout_models
) -> None:
    models = rollout_models
    v0, v1, _ = models.versions
    settings = pubsub_setup
    # As in the chaos tests: the emulator hands a dead client's stream a share of messages
    # until their lease ends, each trip a delivery attempt; few outstanding, more attempts.
    setup(load_settings(dict(bridge_env, PUBSUB_MAX_DELIVERY_ATTEMPTS="100")))
    serving = {
        "FMNIST_MODEL_DIR": str(models.trusted),
        "FMNIST_MODEL_PATH": str(models.default(models.trusted)),
        "FMNIST_WINDOW_SECONDS": str(WINDOW),
        "BRIDGE_MAX_MESSAGES": "4",  # 200 images leased at a time: the kill finds some in flight
    }
    bridge = start_bridge(**serving)
    done = model_cli(bridge_env, "--backend", "pubsub", "shadow", v1, directory=models.trusted)
    assert done.returncode == 0, done.stderr
    bridge.wait_for(lambda b: b.get("/stats/").json()["models"]["shadow"] == v1, "the bridge shadowing v1")

    windows = drift_stream(test_split)
    published: list[tuple[int, int]] = []  # per part: its first and last window start
    killed_at = None
    before_third = sum(len(w.ids) for w in windows[: KILL_AFTER - 1])
    producer = MainManager("pubsub", settings).create_producer(settings.topics.images)
    try:
        for n, window in enumerate(windows):
            if n == KILL_AFTER:  # the rollout state is in the store: the new bridge shadows v1 too
                bridge.wait_for(lambda b: b.accuracy()["images"] > before_third, "the third part being counted")
                killed_at = bridge.accuracy()["images"]
                bridge.stop(signal.SIGKILL)
                bridge = start_bridge(**serving)
                assert bridge.get("/stats/").json()["models"]["shadow"] == v1
            start = (int(time.time()) // WINDOW + 1) * WINDOW
            time.sleep(max(0.0, start + 0.1 - time.time()))  # the stream's own pace: a part per window
            sent_from = time.time()
            for first in range(0, len(window.ids), PER_RECORD):
                part = slice(first, first + PER_RECORD)
                producer.produce_batch(window.ids[part], window.images[part], window.labels[part].tolist())
            producer.flush()
            published.append((int(sent_from) // WINDOW * WINDOW, int(time.time()) // WINDOW * WINDOW))
    finally:
        producer.close()
    total = sum(len(window.ids) for window in windows)
    bridge.wait_for(lambda b: b.accuracy()["images"] >= total, f"all {total} images counted", timeout=180)
    assert bridge.accuracy()["images"] == total
    document = bridge.get("/drift/").json()

    for version, role, index in ((v0, "live", 0), (v1, "shadow", 1)):
        part = document["models"][version]
        assert part["role"] == role and part["reference"] == "ok"
        rows = {row["start"]: row for row in part["windows"]}
        classifier = load_classifier(models.trusted / f"m{index}.joblib")
        print(f"DRIFT pubsub {role} {version} (SIGKILL at {killed_at} of {total} images):")
        psi = []
        for window, (first, last) in zip(windows, published):
            mine = [rows[start] for start in sorted(rows) if first <= start <= last]
            counted = {s.name: np.sum([row["counts"][s.name] for row in mine], axis=0).tolist() for s in drift.SIGNALS}
            assert counted == offline_drift(classifier, window.images), (version, window.kind)  # exact
            psi.append([row["psi"] for row in mine if row["psi"] is not None])
            print(f"  {window.kind:<26} windows {[row['images'] for row in mine]}  psi {psi[-1]}")
        for w in (0, 1, 4):  # the test split
            assert psi[w] and all(max(p.values()) < drift.PSI_WARN for p in psi[w]), (version, w, psi[w])
        assert any(p["intensity"] > drift.PSI_ALERT for p in psi[2] + psi[3])  # inverted: within two windows
        assert all(p["intensity"] > drift.PSI_ALERT for p in psi[3])
        assert any(p["class"] > drift.PSI_ALERT for p in psi[5] + psi[6])  # one class: within two windows

    gauges = {
        (s.labels["signal"], s.labels["model_version"], s.labels["role"]): s.value
        for family in text_string_to_metric_families(bridge.get("/metrics").text)
        if family.name == "fmnist_drift_psi"
        for s in family.samples
    }
    for version in (v0, v1):
        latest = document["models"][version]["latest"]["psi"]
        role = document["models"][version]["role"]
        assert {signal: gauges[(signal, version, role)] for signal in latest} == latest
