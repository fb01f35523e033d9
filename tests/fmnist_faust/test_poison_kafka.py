"""A message the model fails on, on the real broker: isolated, dead-lettered, the rest exact.

The worker runs with the documented fault injection ``FMNIST_FAULT_WHITE_IMAGES=1`` (predict
raises on any batch holding an all-white image); one all-white image is among 4,000 test
images. It must be the only dead letter (``processing_failed``, the exception in ``error``),
every other image counted exactly once (totals equal the offline confusion), and every
partition must move on past it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from fmnist_faust.config import load_settings
from support import consume_topics, offline_confusion, produce_images, wait_until

pytestmark = pytest.mark.kafka

IMAGES = 4000
POISON = 2345


@pytest.mark.timeout(180)
def test_a_poison_image_is_dead_lettered_and_every_other_image_counted(
    start_worker: Any, worker_env: dict[str, str], kafka_bootstrap: str, tiny_model: Path, test_split: Any
) -> None:
    settings = load_settings(worker_env)
    images, labels = test_split.images[:IMAGES].copy(), test_split.labels[:IMAGES].astype(int)
    images[POISON] = 255
    worker = start_worker(FMNIST_FAULT_WHITE_IMAGES="1")
    started = time.monotonic()
    ids = produce_images(kafka_bootstrap, settings.topics.images, images, labels)

    report = wait_until(
        lambda: (r := worker.accuracy())["images"] + r["rejected"] >= IMAGES and r,
        timeout=120,
        what="every image counted or dead-lettered",
    )
    elapsed = time.monotonic() - started
    records = consume_topics(
        kafka_bootstrap, {settings.topics.dlq: 1, settings.topics.predictions: IMAGES - 1}, timeout=30, settle=2.0
    )
    report = worker.accuracy()  # after the settle time: nothing counted late or twice

    dead = records[settings.topics.dlq]
    assert len(dead) == 1, [(r.key, dict(r.headers)) for r in dead]
    headers = {name: value.decode() for name, value in dead[0].headers}
    assert dead[0].key == ids[POISON].encode()
    assert headers["error_kind"] == "processing_failed"
    assert "injected fault" in headers["error"] and "all-white" in headers["error"]

    good = [i for i in range(IMAGES) if i != POISON]
    assert report["rejected"] == 1 and report["rejected_by_kind"] == {"processing_failed": 1}
    assert report["images"] == IMAGES - 1 and report["labeled"] == IMAGES - 1
    assert report["confusion"] == offline_confusion(tiny_model, images[good], labels[good])
    assert sorted(r.key.decode() for r in records[settings.topics.predictions]) == sorted(ids[i] for i in good)
    assert worker.proc is not None and worker.proc.poll() is None, "the worker died"
    print(f"\n4,000 images, 1 poison: counted {report['images']}, dead-lettered 1, in {elapsed:.1f} s")
