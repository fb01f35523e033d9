"""The classify agent through Faust's ``agent.test_context()`` (no broker).

The producer's ``send`` (dead letters, seen-id marks), the batched send of predictions
(``agents.send_batched``) and the scores table's ``send_changelog`` are replaced by recorders: this tests the adapter's logic (batching, DLQ routing, offset-stamped rows,
replay skipping); the real-broker behaviour is covered by test_pipeline_kafka.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fmnist_faust.core.contract import decode_prediction, encode_image
from fmnist_faust.core.model import load_classifier
from fmnist_faust.core.rollout import ActiveModels
from fmnist_faust.seen_ids import SeenIds


@pytest.fixture
def faust_app(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from fmnist_faust import agents, tables
    from fmnist_faust.faust_app import app

    app.conf.store = "memory://"
    app.finalize()
    app.flow_control.resume()
    classifier = load_classifier(tiny_model)
    monkeypatch.setattr(agents, "current_models", lambda: ActiveModels(classifier))

    sent: list[tuple[str, bytes | None, bytes | None, Any]] = []

    async def record_send(
        topic: str, key: Any, value: Any, partition: Any, timestamp: Any, headers: Any, **_: Any
    ) -> asyncio.Future:
        sent.append((topic, key, value, headers))
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def record_batched(producer: Any, topic: str, records: list[tuple[bytes, bytes]]) -> list[asyncio.Future]:
        return [await record_send(topic, key, value, None, None, None) for key, value in records]

    changelog: list[tuple[int, str, dict]] = []
    monkeypatch.setattr(type(app.producer), "send", lambda self, *a, **k: record_send(*a, **k))
    monkeypatch.setattr(agents, "send_batched", record_batched)  # predictions: one record batch per partition
    monkeypatch.setattr(
        tables.scores_table,
        "send_changelog",
        lambda partition, key, value, *a: changelog.append((partition, key, value)),
    )
    monkeypatch.setattr(tables, "seen_ids", SeenIds(3600))  # marks go through app.producer.send, recorded above
    tables.scores_table.data.clear()
    app.test_sent, app.test_changelog, app.test_classifier = sent, changelog, classifier
    return app


async def _until(condition: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "agent did not process the batch"
        await asyncio.sleep(0.02)


def _counted() -> int:
    """Images and rejected messages the score rows hold: a batch is counted after its sends are acked."""
    from fmnist_faust.tables import local_rows, sum_rows

    scores, _ = sum_rows(local_rows())
    return scores.images + sum(scores.rejected.values())


@pytest.mark.timeout(60)
def test_agent_classifies_dead_letters_and_skips_replays(faust_app: Any, test_split) -> None:
    from fmnist_faust import agents
    from fmnist_faust.tables import local_rows, sum_rows

    images, labels = test_split.images[:20], test_split.labels[:20]

    async def run() -> None:
        async with agents.classify.test_context() as agent:
            for i in range(20):
                await agent.put(
                    encode_image(f"id-{i}", images[i], int(labels[i])), key=f"id-{i}".encode(), wait=False
                )  # put(wait=True) waits for a yielded value; we yield none
            await agent.put(b"{not json", key=b"bad", wait=False)
            await _until(lambda: len(faust_app.test_sent) >= 21 and _counted() >= 21)

    asyncio.run(run())
    from fmnist_faust.topics import dlq_topic, predictions_topic

    predictions = [s for s in faust_app.test_sent if s[0] == predictions_topic.get_topic_name()]
    dead = [s for s in faust_app.test_sent if s[0] == dlq_topic.get_topic_name()]
    assert len(predictions) == 20
    assert {decode_prediction(p[2])["id"] for p in predictions} == {f"id-{i}" for i in range(20)}
    assert all(p[1] == decode_prediction(p[2])["id"].encode() for p in predictions)
    assert len(dead) == 1 and dead[0][1] == b"bad" and dead[0][2] == b"{not json"
    assert dict(dead[0][3])["error_kind"] == b"not_json"

    offline, _ = faust_app.test_classifier.predict(images)
    scores, version = sum_rows(local_rows())
    assert scores.labeled == 20 and scores.correct == int((offline == labels).sum())
    assert scores.rejected == {"not_json": 1}
    assert version == faust_app.test_classifier.version
    partition, key, row = faust_app.test_changelog[-1]
    assert key == str(partition) and row["offset"] >= 20


@pytest.mark.timeout(60)
def test_replayed_offsets_are_not_counted_again(faust_app: Any, test_split) -> None:
    from fmnist_faust import agents
    from fmnist_faust.core.scores import Scores
    from fmnist_faust.tables import read_row, write_row

    write_row(0, 1_000_000, Scores(), "v")  # row claims every offset up to 1e6 is applied

    async def run() -> None:
        async with agents.classify.test_context() as agent:
            await agent.put(encode_image("x", test_split.images[0], 1), key=b"x", wait=False)
            await asyncio.sleep(1.0)  # several batch lingers: the event was taken and skipped

    asyncio.run(run())
    assert faust_app.test_sent == []
    offset, scores = read_row(0)
    assert offset == 1_000_000 and scores.images == 0


@pytest.mark.timeout(60)
def test_batch_records_give_one_prediction_per_image_and_dead_letter_per_fault(faust_app: Any, test_split) -> None:
    """A record of 10 images with one bad label: 9 predictions, that image dead-lettered alone
    (one-image form, header batch_index); a malformed record dead-lettered whole, untouched."""
    from fmnist_faust import agents
    from fmnist_faust.core.contract import encode_batch
    from fmnist_faust.tables import local_rows, sum_rows
    from fmnist_faust.topics import dlq_topic, predictions_topic

    images, labels = test_split.images[:10], [int(x) for x in test_split.labels[:10]]
    record = encode_batch([f"b-{i}" for i in range(10)], images, labels).replace(
        f'"labels":[{labels[0]},'.encode(), b'"labels":[12,'
    )
    malformed = encode_batch(["m-0", "m-1"], images[:2])[:-40]

    async def run() -> None:
        async with agents.classify.test_context() as agent:
            await agent.put(record, key=b"gateway-1", wait=False)
            await agent.put(malformed, key=b"gateway-2", wait=False)
            await _until(lambda: len(faust_app.test_sent) >= 11 and _counted() >= 11)

    asyncio.run(run())
    predictions = [s for s in faust_app.test_sent if s[0] == predictions_topic.get_topic_name()]
    dead = {s[1]: s for s in faust_app.test_sent if s[0] == dlq_topic.get_topic_name()}
    assert sorted(decode_prediction(p[2])["id"] for p in predictions) == sorted(f"b-{i}" for i in range(1, 10))
    assert all(p[1] == decode_prediction(p[2])["id"].encode() for p in predictions)
    image = dead[b"gateway-1"]
    assert dict(image[3]) == {
        "error_kind": b"bad_label",
        "error": b"image 0 of the batch record: label must be an integer 0-9 or null, got 12",
        "batch_index": b"0",
    }
    assert json.loads(image[2])["id"] == "b-0" and json.loads(image[2])["label"] == 12
    whole = dead[b"gateway-2"]
    assert whole[2] == malformed and dict(whole[3])["error_kind"] == b"not_json"
    offline, _ = faust_app.test_classifier.predict(images[1:])
    scores, _ = sum_rows(local_rows())
    assert scores.labeled == 9 and scores.correct == int((offline == np.asarray(labels[1:])).sum())
    assert scores.rejected == {"bad_label": 1, "not_json": 1}


def test_image_steps_bound_the_images_per_step_and_never_split_a_record() -> None:
    from faust.types import TP

    from fmnist_faust import agents
    from fmnist_faust.core.contract import encode_batch
    from fmnist_faust.core.pipeline import RawMessage
    from fmnist_faust.fetches import Fetch

    big = RawMessage(encode_batch([str(i) for i in range(600)], np.zeros((600, 784), np.uint8)))
    one = RawMessage(encode_image("x", np.zeros(784, np.uint8)))
    messages = [one, big, big, one, big, one]
    fetch = Fetch(TP("images", 0), 1, list(range(6)), messages)
    steps = agents.image_steps([fetch.cut(0, 2), fetch.cut(2)], limit=1300)
    assert [[m is big for f in step for m in f.messages] for step in steps] == [
        [False, True, True, False],
        [True, False],
    ]
    assert [[f.offsets for f in step] for step in steps] == [[[0, 1], [2, 3]], [[4, 5]]]
    lone = Fetch(TP("images", 0), 1, [7], [big])

    assert agents.image_steps([lone], limit=10) == [[lone]]  # a record larger than the limit is one step


@pytest.mark.timeout(60)
def test_delayed_labels_join_through_the_rows_and_survive_a_lost_state(
    faust_app: Any, test_split, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images without labels wait in their partition's row; labels on the labels partition
    of the same number join them; the state is rebuilt from the chunks when this process
    loses it (a restart); a tick far ahead expires what is left; malformed labels go to the
    DLQ with ``stream: labels``. Every row holds both offsets, the clock and the chain head."""
    from faust.types import TP

    from fmnist_faust import agents, label_join, tables
    from fmnist_faust.core.contract import TICK_VALUE, encode_label
    from fmnist_faust.core.pipeline import RawMessage
    from fmnist_faust.fetches import Fetch
    from fmnist_faust.join_state import JoinChunks
    from fmnist_faust.topics import dlq_topic, images_topic, labels_topic

    monkeypatch.setattr(agents, "_assigned", lambda: None)
    monkeypatch.setattr(type(agents.app), "consumer_generation_id", 0, raising=False)
    monkeypatch.setattr(agents, "gap_guard", agents.GapGuard())
    monkeypatch.setattr(tables, "join_chunks", JoinChunks())
    monkeypatch.setattr(label_join, "join_chunks", tables.join_chunks)
    monkeypatch.setattr(label_join, "states", {})
    images, truth = test_split.images[:10], [int(x) for x in test_split.labels[:10]]
    offline, _ = faust_app.test_classifier.predict(images)
    t0 = 1_000_000.0

    def fetch(tp: TP, offsets: list[int], values: list[bytes], keys: list[bytes | None], at: float) -> Fetch:
        return Fetch(tp, 0, offsets, [RawMessage(v, k, at) for v, k in zip(values, keys)])

    img, lab = TP(images_topic.get_topic_name(), 0), TP(labels_topic.get_topic_name(), 0)

    def label(n: int, value: int | None = None) -> bytes:
        return encode_label(f"d-{n}", truth[n] if value is None else value)

    async def run() -> None:
        flight = agents.InFlight()
        ids = [f"d-{n}".encode() for n in range(10)]
        first = fetch(img, list(range(10)), [encode_image(f"d-{n}", images[n]) for n in range(10)], ids, t0)
        labels = fetch(
            lab, [0, 1, 2, 3], [label(0), label(1), label(1, 9), b"{oops"], [ids[0], ids[1], ids[1], b"x"], t0 + 5
        )
        assert await agents.process_fetches([first, labels], flight)  # both in one batch
        assert await agents.process_fetches([fetch(lab, [4, 5], [label(2), label(3)], ids[2:4], t0 + 6)], flight)
        assert await flight.settle()
        label_join.states.clear()  # as after a restart: rebuilt from the row's chain
        assert await agents.process_fetches([fetch(lab, [6], [label(4)], ids[4:5], t0 + 7)], flight)
        assert await agents.process_fetches([fetch(lab, [7], [TICK_VALUE], [None], t0 + 10_000)], flight)
        assert await flight.settle()

    asyncio.run(run())
    row = tables.scores_table.data["0"]
    assert (row["offset"], row["labels_offset"], row["clock"]) == (9, 7, t0 + 10_000)
    _, scores = tables.read_row(0)
    joined = [0, 1, 2, 3, 4]
    assert (scores.images, scores.labeled, scores.awaiting_label, scores.label_expired) == (10, 5, 0, 5)
    assert scores.correct == sum(int(offline[n] == truth[n]) for n in joined)
    assert scores.labels == {"joined": 5, "repeated": 1}
    assert scores.labels_rejected == {"not_json": 1}
    assert len(label_join.states[0]) == 0  # every life ended at the tick
    dead = [s for s in faust_app.test_sent if s[0] == dlq_topic.get_topic_name()]
    assert [(s[2], dict(s[3])["stream"]) for s in dead] == [(b"{oops", b"labels")]
