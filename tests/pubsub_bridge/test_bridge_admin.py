"""``setup`` against the real emulator, and the command line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from google.cloud import pubsub_v1

from fmnist_faust.config import ENV_VARS, KAFKA_ONLY, Settings, load_settings
from pubsub_bridge.__main__ import main
from pubsub_bridge.admin import SetupError, setup


@pytest.mark.pubsub
def test_setup_is_idempotent_and_wires_the_dead_letter_policy(
    pubsub_setup: Settings, bridge_env: dict[str, str]
) -> None:
    settings = pubsub_setup  # the fixture ran setup once already
    again = setup(settings)
    assert len(again) == 10 and all(line.startswith("exists") for line in again)

    subscriber = pubsub_v1.SubscriberClient()
    with subscriber:
        images = subscriber.get_subscription(
            subscription=subscriber.subscription_path(settings.pubsub.project, settings.pubsub.images_subscription)
        )
        assert images.topic.endswith("/topics/" + settings.topics.images)
        assert images.ack_deadline_seconds == 10
        assert images.dead_letter_policy.dead_letter_topic.endswith("/topics/" + settings.pubsub.dead_letter_topic)
        assert images.dead_letter_policy.max_delivery_attempts == 5
        labels = subscriber.get_subscription(
            subscription=subscriber.subscription_path(settings.pubsub.project, settings.pubsub.labels_subscription)
        )
        assert labels.topic.endswith("/topics/" + settings.topics.labels)
        assert labels.dead_letter_policy == images.dead_letter_policy
        assert labels.message_retention_duration == images.message_retention_duration

    changed = load_settings(dict(bridge_env, PUBSUB_ACK_DEADLINE_SECONDS="20", PUBSUB_MAX_DELIVERY_ATTEMPTS="7"))
    lines = setup(changed)
    assert (
        f"updated subscription projects/{settings.pubsub.project}/subscriptions/{settings.pubsub.images_subscription} "
        "(ack_deadline_seconds, dead_letter_policy)" in lines
    )


@pytest.mark.pubsub
def test_a_message_nacked_too_often_moves_to_the_dead_letter_topic(pubsub_setup: Settings) -> None:
    settings = pubsub_setup
    project = settings.pubsub.project
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    images = subscriber.subscription_path(project, settings.pubsub.images_subscription)
    publisher.publish(publisher.topic_path(project, settings.topics.images), b"poison", key="p").result(30)
    dead = subscriber.subscription_path(project, settings.pubsub.dead_letter_subscription)
    attempts, letters = [], []
    deadline = time.monotonic() + 40
    while not letters and time.monotonic() < deadline:  # the emulator dead-letters on the next delivery
        for received in subscriber.pull(subscription=images, max_messages=10, timeout=2).received_messages:
            attempts.append(received.delivery_attempt)
            subscriber.modify_ack_deadline(subscription=images, ack_ids=[received.ack_id], ack_deadline_seconds=0)
        if len(attempts) >= 5:
            letters = subscriber.pull(subscription=dead, max_messages=10, timeout=2).received_messages
    assert attempts == [1, 2, 3, 4, 5]
    assert [m.message.data for m in letters] == [b"poison"]
    assert letters[0].message.attributes["key"] == "p"
    subscriber.close()


@pytest.mark.pubsub
def test_setup_refuses_a_subscription_on_another_topic(pubsub_setup: Settings, bridge_env: dict[str, str]) -> None:
    swapped = load_settings(dict(bridge_env, PUBSUB_IMAGES_SUBSCRIPTION=pubsub_setup.pubsub.predictions_subscription))
    with pytest.raises(SetupError, match="exists on"):
        setup(swapped)


@pytest.mark.pubsub
def test_setup_purge_discards_the_backlog(
    pubsub_setup: Settings, bridge_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    settings = pubsub_setup
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(settings.pubsub.project, settings.topics.images)
    for n in range(5):
        publisher.publish(topic, b"stale %d" % n).result(30)
    for name, value in bridge_env.items():
        monkeypatch.setenv(name, value)
    assert main(["setup", "--purge"]) == 0
    assert "purged  subscription" in capsys.readouterr().out
    images = subscriber.subscription_path(settings.pubsub.project, settings.pubsub.images_subscription)
    assert not subscriber.pull(subscription=images, max_messages=10, timeout=3).received_messages
    subscriber.close()


@pytest.mark.parametrize("command", ["setup", "run", "watch"])
def test_every_command_has_complete_help(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert [name for name in ENV_VARS if name not in KAFKA_ONLY and name not in text] == []
    assert {"setup": "--purge", "run": "Exits 0 after SIGTERM", "watch": "--count"}[command] in text


def test_an_unusable_key_file_stops_the_bridge_with_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    seed = tmp_path / "pubsub-config.json"
    seed.write_text('{"kafka_servers": ["kafka-1:9092"]}')
    monkeypatch.setenv("PUBSUB_CONFIG_PATH", str(seed))
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    assert main(["setup"]) == 2
    assert f"PUBSUB_CONFIG_PATH={seed}: not a usable service-account key" in capsys.readouterr().err
