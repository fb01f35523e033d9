"""Duplicate ids are counted once: the core's rule as agents._duplicate_ids scopes it, and its durability.

The unit tests drive the rule with fake events (no broker); the last test restarts a
real worker on the real broker and re-sends ids it counted before the restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fmnist_faust.core.contract import InvalidMessage, Prediction, encode_image
from fmnist_faust.core.pipeline import BatchResult, RawMessage
from fmnist_faust.seen_ids import SeenIds
from support import consume_topic, wait_until


@dataclass
class _Message:
    partition: int
    offset: int
    timestamp: float = 1000.0


@dataclass
class _Event:
    message: _Message


def _batch(*items: tuple[int, int, str | None]) -> tuple[list[_Event], BatchResult]:
    """(partition, offset, id or None for an invalid message) -> fake events and outcomes."""
    events = [_Event(_Message(p, o)) for p, o, _ in items]
    outcomes: list[Any] = [
        Prediction(i, 0, 1.0, 0, "v", None) if i is not None else InvalidMessage("not_json", "x") for _, _, i in items
    ]
    return events, BatchResult([RawMessage(b"", None, 1000.0) for _ in items], outcomes, [None] * len(items))


@pytest.fixture
def rule(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Run ``_duplicate_ids`` on an empty seen-table; returns (duplicates, marks written)."""
    from fmnist_faust import agents, tables

    monkeypatch.setattr(tables, "seen_ids", SeenIds(3600))
    written: list[tuple[int, str, int]] = []

    async def mark(partition: int, marks: list[tuple[str, int]], timestamp: float) -> list[Any]:
        written.extend((partition, i, o) for i, o in marks)
        entry = {"partition": partition, "ids": [i for i, _ in marks], "offsets": [o for _, o in marks]}
        tables.seen_ids.remember(f"{partition}@{marks[0][1]}", dict(entry, timestamp=timestamp))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return [done]

    monkeypatch.setattr(agents, "mark_counted", mark)

    def run(events: list[_Event], result: BatchResult, applied: dict[int, int]) -> tuple[set[int], list]:
        written.clear()

        async def go() -> set[int]:
            partitions = [event.message.partition for event in events]
            offsets = [event.message.offset for event in events]
            duplicates, acks = await agents._duplicate_ids(partitions, offsets, result, applied)
            await asyncio.gather(*acks)
            return duplicates

        return asyncio.run(go()), sorted(written)

    yield run


def test_first_occurrence_counts_and_later_ones_in_the_batch_do_not(rule: Any) -> None:
    events, result = _batch((0, 10, "a"), (0, 11, "b"), (0, 12, "a"), (1, 5, "a"), (0, 13, None))
    duplicates, written = rule(events, result, {0: 9, 1: 4})
    assert duplicates == {2}  # "a" in partition 1 is another partition's image; None is invalid
    assert written == [(0, "a", 10), (0, "b", 11), (1, "a", 5)]  # sorted


def test_an_id_counted_by_an_applied_batch_is_a_duplicate(rule: Any) -> None:
    rule(*_batch((0, 10, "a")), {0: 9})
    duplicates, written = rule(*_batch((0, 20, "a"), (0, 21, "c")), {0: 10})
    assert duplicates == {0} and written == [(0, "c", 21)]


def test_a_mark_left_by_a_crashed_batch_is_ignored_and_rewritten(rule: Any) -> None:
    """The batch at offset 10 marked "a" but crashed before its row (applied stays 9)."""
    rule(*_batch((0, 10, "a")), {0: 9})
    duplicates, written = rule(*_batch((0, 10, "a"), (0, 11, "a")), {0: 9})  # the replay
    assert duplicates == {1} and written == [(0, "a", 10)]


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_duplicate_ids_stay_counted_once_across_a_restart(
    start_worker: Any, worker_env: dict[str, str], kafka_bootstrap: str, test_split: Any, tiny_model: Path
) -> None:
    from aiokafka import AIOKafkaProducer

    from fmnist_faust.config import load_settings
    from fmnist_faust.core.model import load_classifier
    from fmnist_faust.kafka_admin import ensure_topics_sync

    settings = load_settings(worker_env)
    ensure_topics_sync(settings)
    images, labels = test_split.images[:60], test_split.labels[:60].astype(int)

    async def produce(items: list[tuple[str, np.ndarray, int]]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await asyncio.gather(
                *[
                    await producer.send(settings.topics.images, encode_image(i, img, lab), key=i.encode())
                    for i, img, lab in items
                ]
            )
        finally:
            await producer.stop()

    worker = start_worker()
    asyncio.run(produce([(f"d-{n}", images[n], int(labels[n])) for n in range(50)]))
    wait_until(lambda: worker.accuracy()["images"] >= 50, timeout=60, what="50 images counted")
    worker.stop()

    again = start_worker(FMNIST_WEB_PORT=str(worker.port), FMNIST_WORKER_DATADIR=worker.env["FMNIST_WORKER_DATADIR"])
    wait_until(lambda: again.accuracy()["images"] == 50, timeout=60, what="tables recovered after the restart")
    # 20 ids counted before the restart, re-sent as new messages with another label, and 10 new ids.
    asyncio.run(
        produce(
            [(f"d-{n}", images[n], (int(labels[n]) + 1) % 10) for n in range(20)]
            + [(f"d-{n}", images[n], int(labels[n])) for n in range(50, 60)]
        )
    )
    # 60 predictions: one per id; the 20 re-sent ids are not published again
    assert len(consume_topic(kafka_bootstrap, settings.topics.predictions, 60, timeout=60, settle=3)) == 60
    report = wait_until(lambda: (r := again.accuracy())["images"] >= 60 and r, timeout=30, what="60 images")

    predicted, _ = load_classifier(tiny_model).predict(images)
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)  # the first label of each id, each id once
    assert report["images"] == 60 and report["labeled"] == 60
    assert report["confusion"] == confusion.tolist()
    assert again.proc is not None and again.proc.poll() is None


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_an_id_re_sent_after_the_dedupe_horizon_counts_again(
    start_worker: Any, worker_env: dict[str, str], kafka_bootstrap: str, test_split: Any
) -> None:
    import time

    from support import produce_images

    horizon = 4.0
    worker = start_worker(FMNIST_DEDUPE_SECONDS=str(horizon))
    topic = worker_env["FMNIST_IMAGES_TOPIC"]
    images, labels = test_split.images[:10], test_split.labels[:10]
    first_sent = time.time()
    produce_images(kafka_bootstrap, topic, images, labels, prefix="h")
    wait_until(lambda: worker.accuracy()["images"] >= 10, timeout=60, what="10 images counted")
    produce_images(kafka_bootstrap, topic, images[:5], labels[:5], prefix="h")  # inside the horizon
    assert time.time() - first_sent < horizon, "the machine was too slow to re-send inside the horizon"
    time.sleep(2)
    assert worker.accuracy()["images"] == 10
    time.sleep(max(0.0, first_sent + horizon + 1.5 - time.time()))
    produce_images(kafka_bootstrap, topic, images[5:], labels[5:], prefix="h", first_index=5)  # after it
    report = wait_until(lambda: (r := worker.accuracy())["images"] >= 15 and r, timeout=60, what="15 images")
    time.sleep(2)
    assert worker.accuracy()["images"] == 15 and report["labeled"] == 15
    # the expired marks left the changelog as tombstones
    changelog = f"{worker_env['FMNIST_APP_ID']}-seen-ids-changelog"
    records = consume_topic(kafka_bootstrap, changelog, 1, timeout=30, settle=2)
    assert any(r.value is None for r in records)


def test_recovery_expands_batched_changelog_messages_and_applies_tombstones(monkeypatch: pytest.MonkeyPatch) -> None:
    """One changelog message per batch and partition; after recovery, one key per id;
    a tombstone (an expired chunk) removes its ids."""
    from fmnist_faust import tables

    monkeypatch.setattr(tables, "seen_ids", SeenIds(3600))
    batch = [_Event(_Message(2, 0)), _Event(_Message(2, 1)), _Event(_Message(2, 2)), _Event(_Message(2, 3))]
    for event, key, value in zip(
        batch,
        ["2@7", "2@12", "2@20", "2@20"],
        [
            {"partition": 2, "ids": ["a", "b"], "offsets": [7, 9], "timestamp": 10.0},
            {"partition": 2, "ids": ["c"], "offsets": [12], "timestamp": 11.0},
            {"partition": 2, "ids": ["d"], "offsets": [20], "timestamp": 12.0},
            None,
        ],
    ):
        event.key, event.value = key, value  # type: ignore[attr-defined]
    tables.seen_table.apply_changelog_batch(batch)  # type: ignore[arg-type]
    assert tables.counted_at(2, "a") == 7 and tables.counted_at(2, "b") == 9
    assert tables.counted_at(2, "c") == 12
    assert tables.counted_at(2, "d") is None  # written, then tombstoned
    assert tables.counted_at(0, "a") is None and tables.counted_at(2, "z") is None


def test_marks_are_chunked_into_bounded_changelog_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from fmnist_faust import tables
    from fmnist_faust.faust_app import app

    sent: list[tuple[str, bytes, bytes, int]] = []

    async def record(topic: str, key: bytes, value: bytes, partition: int, *_: Any) -> Any:
        sent.append((topic, key, value, partition))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    monkeypatch.setattr(type(app.producer), "send", lambda self, *a: record(*a))
    monkeypatch.setattr(tables, "seen_ids", SeenIds(3600))
    marks = [(f"id-{n}", 100 + n) for n in range(tables.MARKS_PER_MESSAGE + 5)]
    acks = asyncio.run(tables.mark_counted(3, marks, 1000.0))
    assert len(acks) == len(sent) == 2
    assert {s[0] for s in sent} == {tables.seen_table.changelog_topic.get_topic_name()}
    assert [json.loads(s[1]) for s in sent] == ["3@100", f"3@{100 + tables.MARKS_PER_MESSAGE}"]
    assert all(s[3] == 3 for s in sent)  # the changelog partition is the input partition
    entries = [json.loads(s[2]) for s in sent]
    assert sum(len(e["ids"]) for e in entries) == len(marks) and all(len(s[2]) < 1 << 20 for s in sent)
    assert tables.counted_at(3, "id-0") == 100 and tables.counted_at(3, f"id-{len(marks) - 1}") == 99 + len(marks)
    assert all(e["timestamp"] == 1000.0 for e in entries)
