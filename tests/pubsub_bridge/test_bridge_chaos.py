"""Exact totals on Pub/Sub under faults (marker ``chaos``, real emulator).

While images are published, the bridge is SIGKILLed three times and restarted, and two
replicas share ``images-sub`` (and the state store) for part of the run; at the end both
live replicas answer ``/accuracy/`` equal to the offline score. ``CHAOS_IMAGES`` sets the
count (CI default 2,000; the documented full run uses 10,000).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge_helpers import Bridge, Collector, checked_totals, offline_scores, publish_images
from fmnist_faust.config import Settings, load_settings
from fmnist_faust.core import dataset
from pubsub_bridge.admin import setup
from support import free_port

pytestmark = [pytest.mark.pubsub, pytest.mark.chaos]
COUNT = min(int(os.environ.get("CHAOS_IMAGES", "2000")), 10000)


def test_three_sigkills_and_two_replicas_keep_totals_exact(
    pubsub_setup: Settings,
    start_bridge: Callable[..., Bridge],
    collect: Callable[[str], Collector],
    test_split: dataset.Split,
    tiny_model: Path,
    bridge_env: dict[str, str],
) -> None:
    settings = pubsub_setup
    predictions = collect(settings.pubsub.predictions_subscription)
    # The emulator hands a dead client's stream a share of messages until their lease ends,
    # each trip a delivery attempt (see test_bridge_integration): short leases, small flow
    # control, and more attempts than 5 so no message is dead-lettered unseen.
    setup(load_settings(dict(bridge_env, PUBSUB_MAX_DELIVERY_ATTEMPTS="100")))
    small = {"BRIDGE_MAX_MESSAGES": "100", "FMNIST_BATCH_SIZE": "50"}
    indices = range(COUNT)
    sender = threading.Thread(
        target=publish_images, args=(settings, test_split, indices), kwargs={"chunk": 100, "pause": 0.15}, daemon=True
    )
    sender.start()

    def replica() -> Bridge:  # same state store, its own web port
        return start_bridge(BRIDGE_WEB_PORT=str(free_port()), **small)

    rng = random.Random(int(os.environ.get("CHAOS_SEED", "11")))
    cuts = sorted(rng.uniform(0.1, 0.7) for _ in range(3))
    live = [replica()]
    live[0].wait_for(lambda b: b.accuracy()["images"] >= cuts[0] * COUNT, "the first cut", timeout=120)
    live[0].stop(signal.SIGKILL)  # kill 1
    live = [replica(), replica()]  # two replicas share images-sub from here
    live[0].wait_for(lambda b: b.accuracy()["images"] >= cuts[1] * COUNT, "the second cut", timeout=180)
    live[0].stop(signal.SIGKILL)  # kill 2: the other replica keeps going
    live = [live[1]]
    live[0].wait_for(lambda b: b.accuracy()["images"] >= cuts[2] * COUNT, "the third cut", timeout=180)
    live[0].stop(signal.SIGKILL)  # kill 3
    live = [replica(), replica()]
    sender.join(timeout=300)

    expected, _, version = offline_scores(tiny_model, test_split, indices, settings.pipeline.window_seconds)
    for bridge in live:
        bridge.wait_for(lambda b: b.accuracy()["images"] >= COUNT, f"all {COUNT} images", timeout=300)
    time.sleep(2.0)  # anything redelivered now must not change the totals
    for bridge in live:
        assert checked_totals(bridge.accuracy()) == expected.report(version)
    assert {p.attributes["id"] for p in predictions.wait(COUNT)} == {f"img-{i:05d}" for i in indices}
    for bridge in live:
        assert bridge.stop() == 0
