"""Exact totals under faults on the real broker (marker ``chaos``).

The worker is SIGKILLed three times at random moments and restarted, and the broker is
restarted once (``tools/services.sh restart-kafka``, same data) while images stream; at
the end ``/accuracy/`` equals the offline score exactly. Scale-out: two workers share the
partitions and either answers the exact global totals. ``CHAOS_IMAGES`` sets the count
(CI default 3,000; the documented full run uses 10,000).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time

import pytest

from fmnist_faust.client import MainManager
from fmnist_faust.config import load_settings
from fmnist_faust.core.contract import encode_image
from fmnist_faust.kafka_admin import ensure_topics_sync
from support import ROOT, consume_topic, offline_confusion, produce_images, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]
COUNT = int(os.environ.get("CHAOS_IMAGES", "3000"))


def stream_in_background(
    bootstrap: str, topic: str, images, labels, chunks: int = 20, per_record: int = 0
) -> threading.Thread:
    """Produce the images in ``chunks`` slices over a few seconds, ids unique per image, with
    one long-lived producer: across the broker restart aiokafka reconnects and retries.
    ``per_record`` > 0: as batch records of that many images."""

    def run() -> None:
        try:
            settings = load_settings({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "FMNIST_IMAGES_TOPIC": topic})
            ensure_topics_sync(settings)
            producer = MainManager("kafka", settings).create_producer(topic)
            try:
                step = -(-len(images) // chunks)
                for start in range(0, len(images), step):
                    end = min(start + step, len(images))
                    if per_record:
                        for first in range(start, end, per_record):
                            last = min(first + per_record, end)
                            ids = [f"chaos-{i}" for i in range(first, last)]
                            producer.produce_batch(ids, images[first:last], labels[first:last].tolist(), time.time())
                    else:
                        producer.produce_many(
                            (encode_image(f"chaos-{i}", images[i], int(labels[i]), time.time()), f"chaos-{i}")
                            for i in range(start, end)
                        )
                    time.sleep(0.3)
                producer.flush(timeout=180)
            finally:
                producer.close()
        except BaseException as exc:  # reported by the test, not lost with the thread
            thread.error = exc
            raise

    thread = threading.Thread(target=run, name="chaos-producer", daemon=True)
    thread.error = None  # type: ignore[attr-defined]
    thread.start()
    return thread


def restart_broker() -> None:
    if not (ROOT / ".run" / "kafka" / "pid").exists():
        pytest.skip("the broker was not started by tools/services.sh: cannot restart it")
    subprocess.run([str(ROOT / "tools" / "services.sh"), "restart-kafka"], check=True, timeout=120)


def test_sigkill_three_times_and_broker_restart_exact(
    start_worker, worker_env, kafka_bootstrap, test_split, tiny_model
) -> None:
    images, labels = test_split.images[:COUNT], test_split.labels[:COUNT]
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "7")))
    worker = start_worker()
    port = str(worker.port)
    producer = stream_in_background(kafka_bootstrap, worker_env["FMNIST_IMAGES_TOPIC"], images, labels)
    kills = 0
    for fraction in sorted(rng.uniform(0.1, 0.8) for _ in range(3)):
        wait_until(
            lambda w=worker, f=fraction: w.accuracy()["images"] >= f * COUNT,
            timeout=180,
            what=f"{fraction:.0%} counted before kill {kills + 1}",
        )
        worker.stop(signal.SIGKILL)
        kills += 1
        if kills == 2:
            restart_broker()
        worker = start_worker(FMNIST_WEB_PORT=port)
    producer.join(timeout=300)
    assert not producer.is_alive() and producer.error is None, f"the producer failed: {producer.error!r}"
    report = wait_until(
        lambda: (r := worker.accuracy())["images"] >= COUNT and r,
        timeout=300,
        what=f"all {COUNT} images counted after {kills} kills",
    )
    time.sleep(2)  # anything counted twice would show up now
    report = worker.accuracy()
    assert kills == 3
    assert report["images"] == COUNT and report["labeled"] == COUNT
    assert report["confusion"] == offline_confusion(tiny_model, images, labels)
    records = consume_topic(kafka_bootstrap, worker_env["FMNIST_PREDICTIONS_TOPIC"], COUNT, timeout=120)
    ids = {r.key.decode() for r in records}
    assert ids == {f"chaos-{i}" for i in range(COUNT)}  # every image answered (at least once)


def test_batch_records_exact_under_a_sigkill(start_worker, worker_env, kafka_bootstrap, test_split, tiny_model) -> None:
    """The same, fed batch records of 50 images: a record is counted whole or not at all, its
    images once each, whatever the worker was doing when it died. (One kill, and a short
    session timeout so the dead member leaves the group in seconds: CI time.)"""
    images, labels = test_split.images[:COUNT], test_split.labels[:COUNT]
    quick = {"FMNIST_SESSION_TIMEOUT": "8"}
    worker = start_worker(**quick)
    port = str(worker.port)
    producer = stream_in_background(
        kafka_bootstrap, worker_env["FMNIST_IMAGES_TOPIC"], images, labels, chunks=10, per_record=50
    )
    wait_until(lambda: worker.accuracy()["images"] >= 0.4 * COUNT, timeout=180, what="40% counted")
    worker.stop(signal.SIGKILL)
    worker = start_worker(FMNIST_WEB_PORT=port, **quick)
    producer.join(timeout=300)
    assert not producer.is_alive() and producer.error is None, f"the producer failed: {producer.error!r}"
    wait_until(lambda: worker.accuracy()["images"] >= COUNT, timeout=300, what=f"all {COUNT} images counted")
    time.sleep(2)  # anything counted twice would show up now
    report = worker.accuracy()
    assert report["images"] == COUNT and report["labeled"] == COUNT
    assert report["confusion"] == offline_confusion(tiny_model, images, labels)
    records = consume_topic(kafka_bootstrap, worker_env["FMNIST_PREDICTIONS_TOPIC"], COUNT, timeout=120)
    assert {r.key.decode() for r in records} == {f"chaos-{i}" for i in range(COUNT)}


def test_two_workers_share_partitions_and_both_report_global_totals(
    start_worker, worker_env, kafka_bootstrap, test_split, tiny_model
) -> None:
    images, labels = test_split.images[:COUNT], test_split.labels[:COUNT]
    topic = worker_env["FMNIST_IMAGES_TOPIC"]
    first = start_worker()
    half = COUNT // 2
    produce_images(kafka_bootstrap, topic, images[:half], labels[:half], prefix="scale")
    wait_until(lambda: first.accuracy()["images"] >= half // 2, timeout=120, what="first worker busy")
    second = start_worker()  # rebalance mid-stream
    produce_images(kafka_bootstrap, topic, images[half:], labels[half:], prefix="scale", first_index=half)
    expected = offline_confusion(tiny_model, images, labels)
    for worker in (first, second):
        report = wait_until(
            lambda w=worker: (r := w.accuracy())["images"] >= COUNT and r,
            timeout=180,
            what="global totals on each worker",
        )
        assert report["images"] == COUNT and report["confusion"] == expected
    assert first.stop() == 0  # the other takes over every partition
    time.sleep(3)
    report = second.accuracy()
    assert report["images"] == COUNT and report["confusion"] == expected
