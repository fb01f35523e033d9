"""Delayed labels on the real broker (marker ``kafka``; the SIGKILL run also ``chaos``).

Images are sent without labels and their labels come later on the labels topic, shuffled:
a tenth before their images, a tenth never, some twice, plus labels for ids no image has
and malformed ones; the worker is SIGKILLed and restarted in between. ``/accuracy/`` then
counts exactly the joined images, with their offline confusion matrix, exactly the tenth
never labelled as ``awaiting_label``, then, after the wait, as ``label_expired``.
``LABELS_IMAGES`` sets the count (CI default 600; the closing note's run: 4,000),
``LABELS_WAIT_SECONDS`` the wait (default 30).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fmnist_faust.client import MainManager
from fmnist_faust.config import load_settings
from fmnist_faust.core.contract import encode_image
from fmnist_faust.kafka_admin import ensure_topics_sync
from support import DelayedLabels, consume_topic, wait_until

pytestmark = pytest.mark.kafka
COUNT = int(os.environ.get("LABELS_IMAGES", "600"))
WAIT_S = float(os.environ.get("LABELS_WAIT_SECONDS", "30"))


def produce_paced(env: dict[str, str], topic: str, items: list[tuple[bytes, str | None]], chunks: int = 10) -> None:
    """``items`` in ``chunks`` slices, 0.2 s apart: a stream the worker is killed in the middle of."""
    step = -(-len(items) // chunks)
    for start in range(0, len(items), step):
        produce(env, topic, items[start : start + step])
        time.sleep(0.2)


def produce(env: dict[str, str], topic: str, items: list[tuple[bytes, str | None]]) -> None:
    settings = load_settings(env)
    ensure_topics_sync(settings)
    producer = MainManager("kafka", settings).create_producer(topic)
    try:
        producer.produce_many(items)
        producer.flush()
    finally:
        producer.close()


@pytest.mark.chaos
@pytest.mark.timeout(600)
def test_delayed_labels_join_exactly_across_a_sigkill(
    start_worker: Any, worker_env: dict[str, str], kafka_bootstrap: str, test_split: Any, tiny_model: Path
) -> None:
    images, labels = test_split.images[:COUNT], test_split.labels[:COUNT]
    plan = DelayedLabels(labels)
    quick = {"FMNIST_SESSION_TIMEOUT": "6", "FMNIST_LABEL_WAIT_SECONDS": str(WAIT_S)}
    topics = load_settings(worker_env).topics
    started = time.monotonic()
    worker = start_worker(**quick)
    port = str(worker.port)

    produce(worker_env, topics.labels, plan.labels(plan.early) + plan.unknown())  # labels before their images
    wait_until(
        lambda: worker.accuracy()["labels"]["awaiting_image"] == len(plan.early) + plan.UNKNOWN,
        timeout=60,
        what="the early labels waiting",
    )
    sent_at = time.monotonic()
    produce(worker_env, topics.images, [(encode_image(i, images[n]), i) for n, i in enumerate(plan.ids)])
    wait_until(lambda: worker.accuracy()["images"] >= COUNT, timeout=120, what=f"{COUNT} images counted")
    # the other labels stream in while the worker is SIGKILLed and restarted
    late = plan.labels(plan.late) + [m[:2] for m in plan.MALFORMED]
    sender = threading.Thread(target=produce_paced, args=(worker_env, topics.labels, late), daemon=True)
    sender.start()
    cut = len(plan.early) + len(plan.late) // 3
    wait_until(lambda: worker.accuracy()["labeled"] >= cut, timeout=60, what="a third of the labels joined")
    worker.stop(signal.SIGKILL)
    killed_at = cut
    worker = start_worker(FMNIST_WEB_PORT=port, **quick)
    sender.join(timeout=120)
    wait_until(lambda: worker.accuracy()["labeled"] == len(plan.joined), timeout=120, what="every label joined")
    produce(worker_env, topics.labels, plan.labels(plan.twice, wrong=True))  # second labels: the first one won
    report = wait_until(
        lambda: (r := worker.accuracy())["labels"]["repeated"] >= len(plan.twice) and r,
        timeout=60,
        what="the second labels",
    )
    joined_after = time.monotonic() - sent_at
    assert joined_after < WAIT_S, f"the labels took {joined_after:.1f} s, longer than the wait: raise it"
    plan.check_joined(report, tiny_model, images, labels)
    windows = worker.get("/accuracy/window/").json()["windows"]
    assert sum(w["labeled"] for w in windows) == report["labeled"] and sum(w["images"] for w in windows) == COUNT
    assert sum(w["correct"] for w in windows) == report["correct"]

    wait_until(
        lambda: (r := worker.accuracy())["label_expired"] == len(plan.never) and r["labels"]["expired"],
        timeout=WAIT_S + 60,
        what="the never-labelled images and the unknown ids' labels expired",
    )
    time.sleep(2)  # anything counted twice would show now
    report = worker.accuracy()
    plan.check_expired(report, tiny_model, images, labels)
    plan.check_metrics(worker.url, report)
    by_model = report["by_model"]
    assert sum(part["live"]["labeled"] for part in by_model.values() if part["live"]) == report["labeled"]
    assert sum(part["live"]["label_expired"] for part in by_model.values() if part["live"]) == len(plan.never)

    dead = consume_topic(kafka_bootstrap, topics.dlq, len(plan.MALFORMED), timeout=30)
    kinds = sorted(dict(r.headers)["error_kind"].decode() for r in dead)
    assert kinds == sorted(kind for _, _, kind in plan.MALFORMED)
    assert all(dict(r.headers)["stream"] == b"labels" for r in dead)
    print(
        f"LABELS kafka: {COUNT} images, wait {WAIT_S:.0f} s, SIGKILL at {killed_at} labelled, every label joined "
        f"{joined_after:.1f} s after the images were sent, {time.monotonic() - started:.1f} s in all:",
        json.dumps(plan.figures(report)),
    )


@pytest.mark.timeout(120)
def test_a_labels_topic_with_another_partition_count_is_refused(
    start_worker: Any, worker_env: dict[str, str], kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Not co-partitioned with the images: the worker exits at once, naming both topics and the fix."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from fmnist_faust.partition_guard import EXIT_PARTITIONS

    topics = load_settings(worker_env).topics

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topics.labels, 3, 1)])
        finally:
            await admin.close()

    asyncio.run(create())
    with pytest.raises(RuntimeError) as failed:
        start_worker()
    assert f"exited with {EXIT_PARTITIONS}" in str(failed.value)
    log = (tmp_path / "worker0.log").read_text()
    assert "refusing to count" in log and topics.labels in log and "has 3 partitions" in log
