"""The dedupe horizon on the real emulator: the bridge as ``python -m pubsub_bridge run``.

An id re-sent inside ``FMNIST_DEDUPE_SECONDS`` is counted once, one re-sent after it is
counted again, the expired key leaves the store file, and a restart keeps unexpired ids.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from datetime import timedelta

import pytest
from google.cloud import pubsub_v1

from bridge_helpers import Bridge, publish_images
from fmnist_faust.config import Settings, load_settings
from fmnist_faust.core import dataset
from pubsub_bridge.admin import MIN_RETENTION_S, setup

pytestmark = pytest.mark.pubsub


def rows(path: str) -> int:
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT COUNT(*) FROM processed").fetchone()[0])


def test_inside_the_horizon_counts_once_after_it_counts_again(
    pubsub_setup: Settings, start_bridge: Callable[..., Bridge], test_split: dataset.Split, bridge_env: dict[str, str]
) -> None:
    settings = pubsub_setup
    bridge = start_bridge(FMNIST_DEDUPE_SECONDS="5")
    publish_images(settings, test_split, [0, 1], prefix="h")
    bridge.wait_for(lambda b: b.accuracy()["images"] == 2, "2 images counted")
    counted_at = time.monotonic()

    publish_images(settings, test_split, [0], prefix="h")  # the same id, well inside 5 s
    bridge.wait_for(lambda b: b.metric("fmnist_duplicates_total") == 1, "the re-sent id acked as a duplicate")
    assert time.monotonic() - counted_at < 5, "the re-send must land inside the horizon"
    assert bridge.accuracy()["images"] == 2

    # After the horizon both keys are pruned from the file (the pruner checks every second).
    bridge.wait_for(lambda b: b.metric("fmnist_bridge_pruned_total") == 2, "expired keys pruned", timeout=30)
    assert rows(bridge_env["BRIDGE_STATE_PATH"]) == 0
    publish_images(settings, test_split, [0], prefix="h")  # the same id again, now after the horizon
    bridge.wait_for(lambda b: b.accuracy()["images"] == 3, "the id counted again after the horizon")
    assert bridge.metric("fmnist_duplicates_total") == 1
    assert rows(bridge_env["BRIDGE_STATE_PATH"]) == 1
    assert bridge.stop() == 0


def test_a_restart_keeps_unexpired_ids(
    pubsub_setup: Settings, start_bridge: Callable[..., Bridge], test_split: dataset.Split
) -> None:
    settings = pubsub_setup
    first = start_bridge(FMNIST_DEDUPE_SECONDS="120")
    publish_images(settings, test_split, range(5), prefix="r")
    first.wait_for(lambda b: b.accuracy()["images"] == 5, "5 images counted")
    assert first.stop() == 0

    second = start_bridge(FMNIST_DEDUPE_SECONDS="120")
    publish_images(settings, test_split, range(3, 8), prefix="r")  # 2 seen before the restart, 3 new
    second.wait_for(lambda b: b.accuracy()["images"] == 8, "the 3 new images counted")
    # the 2 re-sent ids skipped (more if the emulator redelivers some of the first 5, whose acks
    # the stopped bridge's stream may not have delivered: those are skipped too)
    second.wait_for(lambda b: b.metric("fmnist_duplicates_total") >= 2, "2 re-sent ids skipped")
    time.sleep(1.5)  # nothing more arrives
    assert second.accuracy()["images"] == 8


def test_setup_sets_the_images_retention_to_the_horizon(pubsub_setup: Settings, bridge_env: dict[str, str]) -> None:
    settings = pubsub_setup
    subscriber = pubsub_v1.SubscriberClient()

    def retention(name: str) -> timedelta:
        return subscriber.get_subscription(
            subscription=subscriber.subscription_path(settings.pubsub.project, name)
        ).message_retention_duration

    with subscriber:
        assert retention(settings.pubsub.images_subscription) == timedelta(seconds=3600)  # the default horizon

        lines = setup(load_settings(dict(bridge_env, FMNIST_DEDUPE_SECONDS="86400")))
        assert any(line.startswith("updated subscription") and "message_retention_duration" in line for line in lines)
        assert retention(settings.pubsub.images_subscription) == timedelta(days=1)

        week_plus = setup(load_settings(dict(bridge_env, FMNIST_DEDUPE_SECONDS=str(30 * 86400))))
        assert retention(settings.pubsub.images_subscription) == timedelta(days=7)  # Pub/Sub's maximum; still safe
        assert not any(line.startswith("warning") for line in week_plus)

        short = setup(load_settings(dict(bridge_env, FMNIST_DEDUPE_SECONDS="5")))
        assert retention(settings.pubsub.images_subscription) == timedelta(seconds=MIN_RETENTION_S)
        assert any(line.startswith("warning: FMNIST_DEDUPE_SECONDS=5 is shorter") for line in short)
