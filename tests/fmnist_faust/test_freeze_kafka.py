"""Exact totals when a process hangs instead of dying (markers ``kafka``, ``chaos``).

A frozen broker (SIGSTOP, long enough for the consumer session to expire, with a batch in
flight) and a frozen worker (SIGSTOP past its session while a second worker takes its
partitions, then SIGCONT: a zombie with a batch in flight). Afterwards every image on the
input topic is counted exactly once and answered, and the group's committed offset of
every input partition is its log end: nothing committed past, nothing stuck behind a hole.
``FREEZE_IMAGES`` sets the count (default 4,000) and ``FREEZE_SESSION_S`` the session
timeout the workers run with (default 10 s); the freezes last ``FREEZE_SECONDS`` (default
session + 15 s). The loop of the closing note: ``tools/freeze-loop.sh``.
"""

from __future__ import annotations

import os
import time

import pytest

from support import (
    broker_pid,
    committed_and_ends,
    consume_topic,
    counted,
    freeze,
    offline_confusion,
    produce_images,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]
COUNT = int(os.environ.get("FREEZE_IMAGES", "4000"))
SESSION_S = float(os.environ.get("FREEZE_SESSION_S", "10"))
FREEZE_S = float(os.environ.get("FREEZE_SECONDS", SESSION_S + 15))


def assert_exact(workers, env, bootstrap, tiny_model, images, labels, prefix) -> None:
    expected = offline_confusion(tiny_model, images, labels)
    for worker in workers:
        wait_until(lambda w=worker: counted(w) >= COUNT, timeout=240, what=f"all {COUNT} images counted")
        time.sleep(6)  # a second count, or a zombie's older row winning, would show up now
        report = worker.accuracy()
        assert report["images"] == COUNT and report["confusion"] == expected
    records = consume_topic(bootstrap, env["FMNIST_PREDICTIONS_TOPIC"], COUNT, timeout=120)
    assert {r.key.decode() for r in records} == {f"{prefix}-{i}" for i in range(COUNT)}
    committed, ends = wait_until(
        lambda: (c := committed_and_ends(bootstrap, env["FMNIST_APP_ID"], env["FMNIST_IMAGES_TOPIC"]))[0] == c[1] and c,
        timeout=30,
        what="committed offsets to reach the log ends",
    )
    assert sum(ends.values()) == COUNT


def test_broker_frozen_mid_batch_past_the_session_loses_nothing(
    start_worker, worker_env, kafka_bootstrap, test_split, tiny_model
) -> None:
    images, labels = test_split.images[:COUNT], test_split.labels[:COUNT]
    topic = worker_env["FMNIST_IMAGES_TOPIC"]
    worker = start_worker(FMNIST_SESSION_TIMEOUT=str(SESSION_S))
    quarter = COUNT // 4
    produce_images(kafka_bootstrap, topic, images[:quarter], labels[:quarter], prefix="fz")
    wait_until(lambda: counted(worker) >= quarter, timeout=120, what="the first quarter counted")
    produce_images(
        kafka_bootstrap,
        topic,
        images[quarter : 2 * quarter],
        labels[quarter : 2 * quarter],
        prefix="fz",
        first_index=quarter,
    )
    freeze(broker_pid(), FREEZE_S)  # right after the send: the worker has batches in flight
    produce_images(
        kafka_bootstrap, topic, images[2 * quarter :], labels[2 * quarter :], prefix="fz", first_index=2 * quarter
    )
    assert_exact([worker], worker_env, kafka_bootstrap, tiny_model, images, labels, "fz")


def test_frozen_worker_past_its_session_is_fenced_and_totals_stay_exact(
    start_worker, worker_env, kafka_bootstrap, test_split, tiny_model
) -> None:
    images, labels = test_split.images[:COUNT], test_split.labels[:COUNT]
    topic = worker_env["FMNIST_IMAGES_TOPIC"]
    session = {"FMNIST_SESSION_TIMEOUT": str(SESSION_S)}
    zombie = start_worker(**session)
    other = start_worker(**session)
    half = COUNT // 2
    produce_images(kafka_bootstrap, topic, images[:half], labels[:half], prefix="zw")
    wait_until(lambda: counted(zombie) >= half // 4, timeout=120, what="the workers busy")
    freeze(zombie.proc.pid, FREEZE_S)  # the other worker takes every partition meanwhile
    produce_images(kafka_bootstrap, topic, images[half:], labels[half:], prefix="zw", first_index=half)
    assert_exact([zombie, other], worker_env, kafka_bootstrap, tiny_model, images, labels, "zw")
    assert zombie.proc.poll() is None and other.proc.poll() is None
