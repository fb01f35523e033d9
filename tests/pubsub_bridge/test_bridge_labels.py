"""Delayed labels on the real Pub/Sub emulator (marker ``pubsub``; the SIGKILL run also ``chaos``).

The scenario of ``test_labels_kafka.py`` (``support.DelayedLabels``) on the bridge: images
without labels, their labels later on the labels subscription, shuffled, a tenth before
their images, a tenth never, some twice, labels for ids no image has and malformed ones,
and a SIGKILL of the bridge in between. ``LABELS_IMAGES`` sets the count (CI default 400;
the closing note's run: 4,000), ``LABELS_BRIDGE_WAIT_SECONDS`` the wait (default 30: it
must cover the restart, which the emulator slows, see docs/long-runs.md).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge_helpers import Bridge, Collector
from fmnist_faust.client import MainManager
from fmnist_faust.config import Settings, load_settings
from fmnist_faust.core import dataset
from fmnist_faust.core.contract import encode_image
from pubsub_bridge.admin import setup
from support import DelayedLabels, free_port

pytestmark = pytest.mark.pubsub
COUNT = int(os.environ.get("LABELS_IMAGES", "400"))
WAIT_S = float(os.environ.get("LABELS_BRIDGE_WAIT_SECONDS", "30"))


def publish(settings: Settings, topic: str, items: list[tuple[bytes, str | None]], chunks: int = 1) -> None:
    """``items`` published, in ``chunks`` slices 0.2 s apart (a stream to kill the bridge in)."""
    producer = MainManager("pubsub", settings).create_producer(topic)
    step = -(-len(items) // chunks)
    try:
        for start in range(0, len(items), step):
            for value, key in items[start : start + step]:
                producer.produce(value, key=key)
            producer.flush()
            if chunks > 1:
                time.sleep(0.2)
    finally:
        producer.close()


@pytest.mark.chaos
@pytest.mark.timeout(300)
def test_delayed_labels_join_exactly_across_a_sigkill(
    pubsub_setup: Settings,
    start_bridge: Callable[..., Bridge],
    collect: Callable[[str], Collector],
    test_split: dataset.Split,
    tiny_model: Path,
    bridge_env: dict[str, str],
) -> None:
    settings = pubsub_setup
    # As in the chaos test: a restarted bridge gets part of the messages only after leases to
    # the dead one's streams lapse, each a delivery attempt (the emulator, see docs/long-runs.md).
    setup(load_settings(dict(bridge_env, PUBSUB_MAX_DELIVERY_ATTEMPTS="100")))
    dead_letters = collect(settings.pubsub.dlq_subscription)
    images, labels = test_split.images[:COUNT], test_split.labels[:COUNT]
    plan = DelayedLabels(labels)
    small = {
        "BRIDGE_MAX_MESSAGES": "100",
        "BRIDGE_STREAMS": "1",
        "FMNIST_BATCH_SIZE": "50",
        "FMNIST_LABEL_WAIT_SECONDS": str(WAIT_S),
    }
    started = time.monotonic()
    bridge = start_bridge(**small)

    publish(settings, settings.topics.labels, plan.labels(plan.early) + plan.unknown())
    bridge.wait_for(
        lambda b: b.accuracy()["labels"]["awaiting_image"] == len(plan.early) + plan.UNKNOWN, "early labels waiting"
    )
    sent_at = time.monotonic()
    publish(settings, settings.topics.images, [(encode_image(i, images[n]), i) for n, i in enumerate(plan.ids)])
    bridge.wait_for(lambda b: b.accuracy()["images"] >= COUNT, f"{COUNT} images counted")
    # the other labels stream in while the bridge is SIGKILLed and restarted
    late = plan.labels(plan.late) + [m[:2] for m in plan.MALFORMED]
    sender = threading.Thread(target=publish, args=(settings, settings.topics.labels, late, 10), daemon=True)
    sender.start()
    cut = len(plan.early) + len(plan.late) // 3
    bridge.wait_for(lambda b: b.accuracy()["labeled"] >= cut, "a third of the labels joined")
    bridge.stop(signal.SIGKILL)
    bridge = start_bridge(BRIDGE_WEB_PORT=str(free_port()), **small)
    sender.join(timeout=120)
    bridge.wait_for(lambda b: b.accuracy()["labeled"] == len(plan.joined), "every label joined", timeout=120)
    # second labels, once the first ones are in: Pub/Sub does not keep order, and the first one wins
    publish(settings, settings.topics.labels, plan.labels(plan.twice, wrong=True))
    bridge.wait_for(lambda b: b.accuracy()["labels"]["repeated"] >= len(plan.twice), "the second labels")
    bridge.wait_for(lambda b: b.accuracy()["labels"]["rejected"] >= len(plan.MALFORMED), "the malformed labels")
    joined_after = time.monotonic() - sent_at
    report = bridge.accuracy()
    assert joined_after < WAIT_S, f"the labels took {joined_after:.1f} s, longer than the wait: raise it"
    plan.check_joined(report, tiny_model, images, labels)
    windows = bridge.get("/accuracy/window/").json()["windows"]
    assert sum(w["labeled"] for w in windows) == report["labeled"] and sum(w["images"] for w in windows) == COUNT

    bridge.wait_for(
        lambda b: (r := b.accuracy())["label_expired"] == len(plan.never) and r["labels"]["expired"] > 0,
        "the never-labelled images and the unknown ids' labels expired",
        timeout=WAIT_S + 60,
    )
    time.sleep(2)  # anything redelivered now must not change the totals
    report = bridge.accuracy()
    plan.check_expired(report, tiny_model, images, labels)
    plan.check_metrics(bridge.url, report)
    live = [part["live"] for part in report["by_model"].values() if part["live"]]
    assert sum(part["labeled"] for part in live) == report["labeled"]
    assert sum(part["label_expired"] for part in live) == len(plan.never)

    letters = dead_letters.wait(len(plan.MALFORMED))
    assert sorted(m.attributes["error_kind"] for m in letters) == sorted(kind for _, _, kind in plan.MALFORMED)
    assert all(m.attributes["stream"] == "labels" for m in letters)
    assert bridge.stop() == 0
    print(
        f"LABELS pubsub: {COUNT} images, wait {WAIT_S:.0f} s, SIGKILL at {cut} labelled, every label joined "
        f"{joined_after:.1f} s after the images were sent, {time.monotonic() - started:.1f} s in all:",
        json.dumps(plan.figures(report)),
    )


@pytest.mark.timeout(120)
def test_a_bridge_without_the_labels_subscription_says_how_to_create_it(
    pubsub_setup: Settings, start_bridge: Callable[..., Bridge], bridge_env: dict[str, str]
) -> None:
    from google.cloud import pubsub_v1

    settings = pubsub_setup
    subscriber = pubsub_v1.SubscriberClient()
    with subscriber:
        subscriber.delete_subscription(
            subscription=subscriber.subscription_path(settings.pubsub.project, settings.pubsub.labels_subscription)
        )
    with pytest.raises(RuntimeError) as failed:
        start_bridge()
    assert "exited with 1" in str(failed.value)
    assert "python -m pubsub_bridge setup" in str(failed.value) and settings.pubsub.labels_subscription in str(
        failed.value
    )
    setup(settings)  # for the teardown
