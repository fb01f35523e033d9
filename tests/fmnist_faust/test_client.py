"""MainManager (the old demo's API) and the producer / logger commands, on real services."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable

import pytest

from fmnist_faust.client import DeliveryError, MainManager, Message, PubSubProducer
from fmnist_faust.config import load_settings
from support import ROOT, wait_until


def _collect() -> tuple[list[Message], threading.Lock, Callable[[Message], None]]:
    got: list[Message] = []
    lock = threading.Lock()

    def callback(message: Message) -> None:
        with lock:
            got.append(message)

    return got, lock, callback


@pytest.mark.kafka
def test_kafka_producer_and_consumer_round_trip(kafka_bootstrap: str) -> None:
    settings = load_settings({"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    topic = f"client-{uuid.uuid4().hex[:8]}"
    manager = MainManager("kafka", settings)
    with manager.create_producer(topic) as producer:
        futures = [producer.produce({"n": i}, key=f"k{i}") for i in range(50)]
        producer.produce(b"raw bytes", key=None)
        producer.flush()
    assert all(f.done() and f.exception() is None for f in futures)  # delivered, errors surfaced
    got, lock, callback = _collect()
    with manager.create_consumer(topic, callback):  # a real background thread
        wait_until(lambda: len(got) >= 51, timeout=30, what="51 Kafka messages")
    keys = {m.key for m in got}
    assert {f"k{i}" for i in range(50)} <= keys and None in keys
    assert any(m.value == b'{"n":7}' and m.key == "k7" for m in got)


@pytest.mark.pubsub
def test_pubsub_key_travels_as_attribute(pubsub_emulator: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from google.cloud import pubsub_v1

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    settings = load_settings({"PUBSUB_EMULATOR_HOST": pubsub_emulator, "GOOGLE_CLOUD_PROJECT": "fmnist-test"})
    tag = uuid.uuid4().hex[:8]
    topic, subscription = f"client-{tag}", f"client-{tag}-sub"
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic_path = publisher.topic_path(settings.pubsub.project, topic)
    publisher.create_topic(name=topic_path)
    with subscriber:
        subscriber.create_subscription(
            name=subscriber.subscription_path(settings.pubsub.project, subscription), topic=topic_path
        )
    manager = MainManager("pubsub", settings)
    with manager.create_producer(topic) as producer:
        for i in range(20):
            producer.produce(f"value-{i}", key=f"id-{i}")
    with pytest.raises(ValueError, match="gcp_subscription_id"):
        manager.create_consumer(topic, lambda m: None)
    got, lock, callback = _collect()
    with manager.create_consumer(topic, callback, gcp_subscription_id=subscription):
        wait_until(lambda: len({m.key for m in got}) >= 20, timeout=60, what="20 Pub/Sub messages")
    assert {m.key: m.value for m in got} == {f"id-{i}": f"value-{i}".encode() for i in range(20)}
    assert all(m.attributes.get("key") == m.key for m in got)


@pytest.mark.kafka
def test_produce_and_logger_commands(start_worker, worker_env: dict[str, str]) -> None:
    worker = start_worker()
    produced = subprocess.run(
        [
            sys.executable,
            "-c",
            "from fmnist_faust.cli import produce_main; raise SystemExit(produce_main())",
            "--count",
            "300",
            "--rate",
            "1000",
        ],
        env=worker_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert produced.returncode == 0, produced.stderr
    assert "sent 300 images in 300 messages to kafka:" in produced.stdout
    assert "300 messages delivered, 0 not delivered" in produced.stdout
    assert "producing [" in produced.stderr  # the progress bar
    batched = subprocess.run(  # 300 more, as batch records of 64 (the last one of 44)
        [
            sys.executable,
            "-c",
            "from fmnist_faust.cli import produce_main; raise SystemExit(produce_main())",
            *("--count", "300", "--batch", "64", "--id-prefix", "batched", "--quiet"),
        ],
        env=worker_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert batched.returncode == 0, batched.stderr
    assert "sent 300 images in 5 messages to kafka:" in batched.stdout
    wait_until(lambda: worker.accuracy()["images"] >= 600, timeout=60, what="600 images counted")
    logged = subprocess.run(
        [
            sys.executable,
            "-c",
            "from fmnist_faust.cli import logger_main; raise SystemExit(logger_main())",
            "--count",
            "600",
            "--timeout",
            "60",
        ],
        env=worker_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert logged.returncode == 0, logged.stderr
    final = logged.stdout.strip().splitlines()[-1]
    report = worker.accuracy()
    assert report["images"] == 600
    assert final.startswith(f"final: 600 predictions, 600 labelled, {report['correct']} correct")

    def produce(*args: str) -> str:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                "from fmnist_faust.cli import produce_main; raise SystemExit(produce_main())",
                *args,
            ],
            env=worker_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    # the delayed ground truth: 100 images without labels, then 80 of their labels, shuffled
    produce("--count", "100", "--no-labels", "--id-prefix", "later", "--quiet")
    wait_until(lambda: worker.accuracy()["awaiting_label"] == 100, timeout=60, what="100 images awaiting labels")
    out = produce("--count", "80", "--labels", "--shuffle", "3", "--id-prefix", "later", "--quiet")
    assert "sent 80 labels in 80 messages to kafka:" in out
    report = wait_until(lambda: (r := worker.accuracy())["labeled"] == 680 and r, timeout=60, what="80 labels joined")
    assert report["awaiting_label"] == 20 and report["labels"]["joined"] == 80


def test_a_kafka_consumer_that_cannot_start_fails_at_once_with_the_brokers_error() -> None:
    from aiokafka.errors import KafkaConnectionError

    from fmnist_faust.netutil import free_port

    settings = load_settings({"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"})  # nothing listens there
    started = time.monotonic()
    with pytest.raises(KafkaConnectionError, match="bootstrap"):
        MainManager("kafka", settings).create_consumer("predictions", lambda m: None)
    assert time.monotonic() - started < 20


@pytest.mark.kafka
def test_produce_many_returns_one_future_per_message_on_kafka(kafka_bootstrap: str) -> None:
    settings = load_settings({"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    with MainManager("kafka", settings).create_producer(f"many-{uuid.uuid4().hex[:8]}") as producer:
        futures = producer.produce_many([(f"v{i}".encode(), f"k{i}") for i in range(30)])
        producer.flush()
    assert len(futures) == 30 and all(f.exception() is None for f in futures)
    assert len({(f.result().partition, f.result().offset) for f in futures}) == 30  # each its own record


def test_a_message_the_broker_refuses_is_counted_as_not_delivered(kafka_bootstrap: str) -> None:
    settings = load_settings({"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    producer = MainManager("kafka", settings).create_producer(f"refused-{uuid.uuid4().hex[:8]}")
    producer.produce_many([(f"v{i}".encode(), f"k{i}") for i in range(20)])
    too_large = producer.produce(b"x" * (5 << 20), key="big")  # over max_request_size: not retriable
    with pytest.raises(DeliveryError, match=r"1 message\(s\) not delivered \(20 delivered, 1 failed"):
        producer.close()
    assert isinstance(too_large.exception(), Exception) and producer.retried == 0


@pytest.mark.pubsub
def test_produce_many_returns_one_future_per_message_on_pubsub(
    pubsub_emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.cloud import pubsub_v1

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    settings = load_settings({"PUBSUB_EMULATOR_HOST": pubsub_emulator, "GOOGLE_CLOUD_PROJECT": "fmnist-test"})
    publisher = pubsub_v1.PublisherClient()
    topic = f"many-{uuid.uuid4().hex[:8]}"
    publisher.create_topic(name=publisher.topic_path(settings.pubsub.project, topic))
    with MainManager("pubsub", settings).create_producer(topic) as producer:
        futures = producer.produce_many([(f"v{i}".encode(), f"k{i}") for i in range(30)])
        producer.flush()
    assert len(futures) == 30 and len({f.result() for f in futures}) == 30  # 30 message ids
    publisher.delete_topic(topic=publisher.topic_path(settings.pubsub.project, topic))


@pytest.mark.pubsub
def test_the_pubsub_producer_holds_its_in_flight_bound_and_counts_exactly(
    pubsub_emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.cloud import pubsub_v1

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    settings = load_settings({"PUBSUB_EMULATOR_HOST": pubsub_emulator, "GOOGLE_CLOUD_PROJECT": "fmnist-test"})
    publisher = pubsub_v1.PublisherClient()
    topic = f"bounded-{uuid.uuid4().hex[:8]}"
    publisher.create_topic(name=publisher.topic_path(settings.pubsub.project, topic))
    producer = PubSubProducer(settings, topic, max_in_flight=500)
    futures = producer.produce_many([(b"x" * 1000, f"k{i}") for i in range(10_000)])
    producer.close()
    assert producer.delivered == 10_000 and producer.failed == 0 and producer.peak_in_flight <= 500
    assert len({f.result() for f in futures}) == 10_000  # a message id each
    publisher.delete_topic(topic=publisher.topic_path(settings.pubsub.project, topic))


@pytest.mark.kafka
def test_the_loggers_subscription_is_its_kafka_consumer_group(kafka_bootstrap: str) -> None:
    """A second logger run in the same group resumes after what the first one read."""
    from fmnist_faust.core.contract import Prediction

    topic, group = f"preds-{uuid.uuid4().hex[:8]}", f"logger-{uuid.uuid4().hex[:8]}"
    settings = load_settings({"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    with MainManager("kafka", settings).create_producer(topic) as producer:
        producer.produce_many([(Prediction(f"p{i}", 1, 0.9, 1, "v", None).encode(), f"p{i}") for i in range(5)])
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
    command = [
        sys.executable,
        "-c",
        "from fmnist_faust.cli import logger_main; raise SystemExit(logger_main())",
        "--topic",
        topic,
        "--subscription",
        group,
    ]
    first = subprocess.run(
        command + ["--count", "5", "--timeout", "60"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert first.stdout.strip().splitlines()[-1].startswith("final: 5 predictions"), first.stderr
    again = subprocess.run(command + ["--timeout", "8"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.stdout.strip().splitlines()[-1].startswith("final: 0 predictions"), again.stderr
