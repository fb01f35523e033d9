"""The Kafka producer never drops, on the real broker frozen mid-stream.

20,000 images go through ``KafkaProducer`` (at most 2,000 in flight, a 2 s request
timeout) while the broker is SIGSTOPped for at least 6 s, and until a send has failed (at
most 30 s: on a busy machine the first timeout can come late): sends time out in the
client's buffer and are retried. Every one must be reported delivered, none failed, the in-flight bound held,
and a running worker must count exactly 20,000 (a retried send that had arrived is a
duplicate id, counted once).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fmnist_faust.client import KafkaProducer
from fmnist_faust.config import load_settings
from fmnist_faust.core.contract import encode_image
from fmnist_faust.kafka_admin import ensure_topics_sync
from support import broker_pid, offline_confusion, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]

COUNT = 20_000
IN_FLIGHT = 2_000
FREEZE_S = 6.0
FREEZE_MAX_S = 30.0


def thaw(pid: int, producer: KafkaProducer) -> None:
    """SIGCONT ``pid`` after FREEZE_S, or later once ``producer`` retried a send (FREEZE_MAX_S at most)."""
    frozen_at = time.monotonic()
    try:
        time.sleep(FREEZE_S)
        while producer.retried == 0 and time.monotonic() - frozen_at < FREEZE_MAX_S:
            time.sleep(0.1)
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.timeout(300)
def test_a_frozen_broker_loses_no_image_and_the_report_is_exact(
    start_worker: Any, worker_env: dict[str, str], tiny_model: Path, test_split: Any
) -> None:
    settings = load_settings(worker_env)
    ensure_topics_sync(settings)
    worker = start_worker()
    rows = np.arange(COUNT) % len(test_split.images)
    images, labels = test_split.images[rows], test_split.labels[rows].astype(int)
    pid = broker_pid()
    producer = KafkaProducer(settings, settings.topics.images, max_in_flight=IN_FLIGHT, request_timeout_s=2.0)
    thawed = threading.Thread(target=thaw, args=(pid, producer))
    started = time.monotonic()
    for start in range(0, COUNT, 500):
        producer.produce_many(
            (encode_image(f"img-{i}", images[i], int(labels[i]), time.time()), f"img-{i}")
            for i in range(start, start + 500)
        )
        if start == 4000:  # frozen here, not by a thread that may start late on a busy machine
            os.kill(pid, signal.SIGSTOP)
            thawed.start()
    producer.close()  # raises DeliveryError if anything was not delivered
    elapsed = time.monotonic() - started
    thawed.join()

    assert producer.delivered == COUNT and producer.failed == 0
    assert producer.retried > 0, f"no send failed in {FREEZE_MAX_S:.0f} s of a frozen broker: the test proved nothing"
    assert producer.peak_in_flight <= IN_FLIGHT
    wait_until(lambda: worker.accuracy()["images"] >= COUNT, timeout=180, what="every image counted")
    time.sleep(2.0)
    report = worker.accuracy()
    assert report["images"] == COUNT and report["confusion"] == offline_confusion(tiny_model, images, labels)
    print(
        f"\n{COUNT} images, broker frozen >= {FREEZE_S:.0f} s: {producer.delivered} delivered, {producer.retried} retries, "
        f"peak {producer.peak_in_flight} in flight, produced in {elapsed:.1f} s, counted {report['images']}"
    )
