"""``FMNIST_PROCESSING_GUARANTEE=exactly_once`` on the real broker (markers ``kafka``, ``chaos``).

One run through every fault we know: the worker SIGKILLed ``EOS_KILLS`` times while it
classifies, the broker frozen (SIGSTOP) past the consumer session, then a second worker
joins and the first is frozen past its session and resumed (a zombie; only when it still
had a batch in flight, which the run does not arrange, is a transaction of it open and
aborted by the fence). Afterwards a ``read_committed`` consumer sees every image id exactly once on
``predictions`` and every bad message exactly once on ``images-dlq``, the totals equal the
offline confusion, and the group's committed offsets (written by the transactions) are the
log ends. And: the tables recover from committed changelog records only (an aborted row is
never applied). ``EOS_IMAGES`` (CI 3,000), ``EOS_KILLS`` (CI 2), ``EOS_SESSION_S`` (CI 6)
and ``EOS_FREEZE_S`` (session + 4) size the run; the full one and its loop:
``tools/eos-loop.sh``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import threading
import time
from collections import Counter

import pytest

from fmnist_faust.client import MainManager
from fmnist_faust.config import load_settings
from fmnist_faust.core.contract import encode_image
from fmnist_faust.core.scores import Scores
from fmnist_faust.kafka_admin import ensure_topics_sync
from support import (
    broker_pid,
    committed_and_ends,
    consume_topics,
    counted,
    freeze,
    handled,
    offline_confusion,
    produce_images,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]
COUNT = int(os.environ.get("EOS_IMAGES", "3000"))
KILLS = int(os.environ.get("EOS_KILLS", "2"))
SESSION_S = float(os.environ.get("EOS_SESSION_S", "6"))
FREEZE_S = float(os.environ.get("EOS_FREEZE_S", SESSION_S + 4))
BAD_EVERY = 250  # one message in this many is not JSON: it must reach the DLQ exactly once
EOS = {"FMNIST_PROCESSING_GUARANTEE": "exactly_once", "FMNIST_SESSION_TIMEOUT": str(SESSION_S)}


def stream(bootstrap: str, topic: str, images, labels, seconds: float) -> threading.Thread:
    """Produce the images (every ``BAD_EVERY``-th replaced by a message that is not JSON)
    evenly over about ``seconds``, in the background."""

    def run() -> None:
        try:
            settings = load_settings({"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "FMNIST_IMAGES_TOPIC": topic})
            ensure_topics_sync(settings)
            producer = MainManager("kafka", settings).create_producer(topic)
            try:
                chunks = 40
                step = -(-len(images) // chunks)
                for start in range(0, len(images), step):
                    producer.produce_many(
                        (b"{not json", f"bad-{i}")
                        if i % BAD_EVERY == BAD_EVERY - 1
                        else (encode_image(f"eos-{i}", images[i], int(labels[i]), time.time()), f"eos-{i}")
                        for i in range(start, min(start + step, len(images)))
                    )
                    time.sleep(seconds / chunks)
                producer.flush(timeout=180)
            finally:
                producer.close()
        except BaseException as exc:
            thread.error = exc
            raise

    thread = threading.Thread(target=run, name="eos-producer", daemon=True)
    thread.error = None  # type: ignore[attr-defined]
    thread.start()
    return thread


def read_committed(bootstrap: str, expected: dict[str, int]) -> dict[str, list]:
    return consume_topics(bootstrap, expected, timeout=120, settle=3.0, isolation_level="read_committed")


def test_exactly_once_through_kills_a_frozen_broker_and_a_zombie(
    start_worker, worker_env, kafka_bootstrap, test_split, tiny_model
) -> None:
    images, labels = test_split.images[:COUNT], test_split.labels[:COUNT]
    bad = {i for i in range(COUNT) if i % BAD_EVERY == BAD_EVERY - 1}
    good = [i for i in range(COUNT) if i not in bad]
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "11")))
    topic = worker_env["FMNIST_IMAGES_TOPIC"]
    worker = start_worker(**EOS)
    port = str(worker.port)
    producer = stream(kafka_bootstrap, topic, images, labels, seconds=10 + 4 * KILLS)
    for kill, fraction in enumerate(sorted(rng.uniform(0.05, 0.5) for _ in range(KILLS))):
        wait_until(
            lambda w=worker, f=fraction: counted(w) >= f * COUNT,
            timeout=240,
            what=f"{fraction:.0%} counted before kill {kill + 1}",
        )
        worker.stop(signal.SIGKILL)
        worker = start_worker(FMNIST_WEB_PORT=port, **EOS)
    wait_until(lambda: counted(worker) >= 0.6 * COUNT, timeout=240, what="60% before the broker freezes")
    freeze(broker_pid(), FREEZE_S)  # the worker has transactions open
    wait_until(lambda: counted(worker) >= 0.7 * COUNT, timeout=240, what="70% after the broker froze")
    other = start_worker(**EOS)
    wait_until(lambda: counted(other) >= 0.75 * COUNT, timeout=240, what="the second worker in the group")
    freeze(worker.proc.pid, FREEZE_S)  # the other takes every partition meanwhile: this one is a zombie
    producer.join(timeout=300)
    assert not producer.is_alive() and producer.error is None, f"the producer failed: {producer.error!r}"

    expected = offline_confusion(tiny_model, images[good], labels[good])
    for each in (worker, other):
        wait_until(lambda w=each: handled(w) >= COUNT, timeout=300, what=f"all {COUNT} messages handled")
    time.sleep(4)  # a second count would show up now
    for each in (worker, other):
        report = each.accuracy()
        assert report["rejected"] == len(bad) and report["rejected_by_kind"] == {"not_json": len(bad)}
        assert report["images"] == len(good) and report["confusion"] == expected
    outputs = read_committed(
        kafka_bootstrap, {worker_env["FMNIST_PREDICTIONS_TOPIC"]: len(good), worker_env["FMNIST_DLQ_TOPIC"]: len(bad)}
    )
    answered = Counter(r.key.decode() for r in outputs[worker_env["FMNIST_PREDICTIONS_TOPIC"]])
    dead = Counter(r.key.decode() for r in outputs[worker_env["FMNIST_DLQ_TOPIC"]])
    assert [k for k, n in answered.items() if n > 1] == [] and set(answered) == {f"eos-{i}" for i in good}
    assert [k for k, n in dead.items() if n > 1] == [] and set(dead) == {f"bad-{i}" for i in bad}
    committed, ends = wait_until(
        lambda: (c := committed_and_ends(kafka_bootstrap, worker_env["FMNIST_APP_ID"], topic))[0] == c[1] and c,
        timeout=60,
        what="the transactions' committed offsets to reach the log ends",
    )
    assert sum(ends.values()) == COUNT
    assert worker.proc.poll() is None and other.proc.poll() is None


def test_tables_recover_committed_rows_only(start_worker, worker_env, kafka_bootstrap, test_split, tiny_model) -> None:
    """A row in an aborted transaction (claiming every offset and 1,000 images on partition 0) is on the
    changelog before the worker starts; the worker's totals never include it."""
    from aiokafka import AIOKafkaProducer

    images, labels = test_split.images[:400], test_split.labels[:400]
    changelog = f"{worker_env['FMNIST_APP_ID']}-scores-changelog"
    claimed = Scores()
    claimed.record([0] * 1000, [0] * 1000, [time.time()] * 1000, 10)
    bogus = {"offset": 10**9, "model_version": "bogus", "scores": claimed.to_dict()}

    async def abort_a_row() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"bogus-{changelog}")
        await producer.start()
        try:
            await producer.begin_transaction()
            await producer.send_and_wait(changelog, json.dumps(bogus).encode(), key=b'"0"', partition=0)
            await producer.abort_transaction()
        finally:
            await producer.stop()

    asyncio.run(abort_a_row())  # creates the changelog (the broker's 4 partitions, as the worker's)
    produce_images(kafka_bootstrap, worker_env["FMNIST_IMAGES_TOPIC"], images, labels, prefix="rc")
    worker = start_worker(**EOS)
    wait_until(lambda: counted(worker) >= len(images), timeout=120, what="the images counted")
    time.sleep(2)
    report = worker.accuracy()
    assert report["images"] == len(images) and report["confusion"] == offline_confusion(tiny_model, images, labels)
