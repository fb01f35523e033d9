"""Fixtures for the bridge: per-test Pub/Sub names on the real emulator, the bridge as a
subprocess (see bridge_helpers.Bridge), readers for what it publishes."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from bridge_helpers import Bridge, Collector, free_port
from fmnist_faust.config import Settings, load_settings


@pytest.fixture
def bridge_env(pubsub_emulator: str, tiny_model: Path, tmp_path: Path) -> dict[str, str]:
    """Environment for one isolated bridge: unique topic/subscription names, own state and port."""
    tag = uuid.uuid4().hex[:8]
    env = dict(os.environ)
    env.update(
        PUBSUB_EMULATOR_HOST=pubsub_emulator,
        GOOGLE_CLOUD_PROJECT=os.environ.get("GOOGLE_CLOUD_PROJECT", "fmnist-local"),
        FMNIST_IMAGES_TOPIC=f"images-{tag}",
        FMNIST_PREDICTIONS_TOPIC=f"predictions-{tag}",
        FMNIST_DLQ_TOPIC=f"images-dlq-{tag}",
        PUBSUB_DEAD_LETTER_TOPIC=f"images-dead-letter-{tag}",
        PUBSUB_IMAGES_SUBSCRIPTION=f"images-sub-{tag}",
        PUBSUB_PREDICTIONS_SUBSCRIPTION=f"prediction-receiver-{tag}",
        PUBSUB_DLQ_SUBSCRIPTION=f"images-dlq-sub-{tag}",
        PUBSUB_DEAD_LETTER_SUBSCRIPTION=f"images-dead-letter-sub-{tag}",
        PUBSUB_ACK_DEADLINE_SECONDS="10",  # redelivery after a SIGKILL within seconds, not a minute
        FMNIST_MODEL_PATH=str(tiny_model),
        FMNIST_BATCH_LINGER="0.02",
        BRIDGE_STATE_PATH=str(tmp_path / "bridge-state.sqlite3"),
        BRIDGE_WEB_PORT=str(free_port()),
        FMNIST_WEB_HOST="127.0.0.1",
        FMNIST_LOG_LEVEL="info",
    )
    return env


@pytest.fixture
def bridge_settings(bridge_env: dict[str, str]) -> Settings:
    return load_settings(bridge_env)


@pytest.fixture
def pubsub_setup(bridge_settings: Settings) -> Iterator[Settings]:
    """Runs the bridge's own setup for this test's names; deletes them afterwards."""
    from google.cloud import pubsub_v1

    from pubsub_bridge.admin import plan, setup

    setup(bridge_settings)
    yield bridge_settings
    topics, subscriptions = plan(bridge_settings)
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    with subscriber:
        for spec in subscriptions:
            subscriber.delete_subscription(subscription=subscriber.subscription_path(bridge_settings.pubsub.project,
                                                                                     spec.name))
        for topic in topics:
            publisher.delete_topic(topic=publisher.topic_path(bridge_settings.pubsub.project, topic))


@pytest.fixture
def start_bridge(bridge_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Bridge]]:
    """Factory: ``start_bridge(**env_overrides)``; every bridge is killed at teardown."""
    bridges: list[Bridge] = []

    def start(**overrides: str) -> Bridge:
        bridge = Bridge(dict(bridge_env, **overrides), tmp_path / f"bridge{len(bridges)}.log")
        bridges.append(bridge)
        return bridge.start()

    yield start
    for bridge in bridges:
        if bridge.proc is not None and bridge.proc.poll() is None:
            bridge.proc.kill()
            bridge.proc.wait(10)


@pytest.fixture
def collect(pubsub_setup: Settings) -> Iterator[Callable[[str], Collector]]:
    collectors: list[Collector] = []

    def start(subscription: str) -> Collector:
        collectors.append(Collector(pubsub_setup, subscription))
        return collectors[-1]

    yield start
    for collector in collectors:
        collector.stop()
