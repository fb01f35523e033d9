"""A message the model fails on, on the real Pub/Sub emulator: isolated, dead-lettered, the rest exact.

The bridge runs with the documented fault injection ``FMNIST_FAULT_WHITE_IMAGES=1`` (predict
raises on any batch holding an all-white image); one all-white image is published among
3,999 test images. It must be the only message on the DLQ topic (``processing_failed``, the
exception in ``error``), acked rather than nacked into the subscription's dead-letter
policy, and every other image counted exactly once (totals equal offline).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bridge_helpers import Bridge, Collector, checked_totals, offline_scores, publish_images
from fmnist_faust.config import Settings
from fmnist_faust.core import dataset
from fmnist_faust.core.contract import encode_image

pytestmark = pytest.mark.pubsub

GOOD = 3999


@pytest.mark.timeout(180)
def test_a_poison_image_is_dead_lettered_and_every_other_image_counted(
    pubsub_setup: Settings,
    start_bridge: Callable[..., Bridge],
    collect: Callable[[str], Collector],
    test_split: dataset.Split,
    tiny_model: Path,
) -> None:
    settings = pubsub_setup
    dead_letters = collect(settings.pubsub.dlq_subscription)
    bridge = start_bridge(FMNIST_FAULT_WHITE_IMAGES="1")
    started = time.monotonic()
    poison = encode_image("poison", np.full(784, 255, dtype=np.uint8), 1)
    indices = range(GOOD)
    publish_images(settings, test_split, indices, extra=[(poison, {"key": "poison"})])

    bridge.wait_for(
        lambda b: (r := b.accuracy())["images"] + r["rejected"] >= GOOD + 1, "every message handled", timeout=120
    )
    elapsed = time.monotonic() - started
    letters = dead_letters.wait(1, quiet=2.0)

    assert len(letters) == 1
    assert letters[0].value == poison and letters[0].attributes["key"] == "poison"
    assert letters[0].attributes["error_kind"] == "processing_failed"
    assert "injected fault" in letters[0].attributes["error"]
    expected, _, version = offline_scores(tiny_model, test_split, indices, settings.pipeline.window_seconds)
    expected.reject("processing_failed")
    assert checked_totals(bridge.accuracy()) == expected.report(version)
    assert bridge.metric("fmnist_bridge_nacked_total") == 0
    assert bridge.proc is not None and bridge.proc.poll() is None, "the bridge died"
    print(f"\n3,999 images + 1 poison: counted {GOOD}, dead-lettered 1, in {elapsed:.1f} s")
