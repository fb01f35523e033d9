"""Batching, dedupe and the publish -> commit -> ack order, without a broker.

The broker's side is played by in-memory stand-ins here; the same paths run against the
real emulator in test_bridge_integration.py.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as gexc

from fmnist_faust.config import Settings, load_settings
from fmnist_faust.core import dataset
from fmnist_faust.core.contract import encode_batch, encode_image
from fmnist_faust.core.model import Classifier, load_classifier
from fmnist_faust.core.recent import RecentMistakes
from pubsub_bridge.bridge import Batcher, StreamAcker, stream_flow_limits
from pubsub_bridge.handler import BatchHandler, TransientError
from pubsub_bridge.store import StateStore


@dataclass
class FakeDelivery:
    data: bytes
    attributes: dict[str, str]
    message_id: str
    ack_id: str = ""
    publish_time: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=timezone.utc))
    delivery_attempt: int | None = 1
    acks: int = 0
    nacks: int = 0

    def ack(self) -> None:
        self.acks += 1

    def nack(self) -> None:
        self.nacks += 1


class DirectAcker:
    def ack(self, deliveries: Any) -> None:
        for delivery in deliveries:
            delivery.ack()

    def nack(self, deliveries: Any) -> None:
        for delivery in deliveries:
            delivery.nack()


class RecordingPublisher:
    """Confirms every publish unless ``fail`` says otherwise for a payload."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []
        self.fail: Any = lambda topic, data: None  # -> exception or None

    def publish(self, topic: str, data: bytes, **attrs: str) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        error = self.fail(topic, data)
        if error is None:
            self.sent.append((topic, data, attrs))
            future.set_result(str(len(self.sent)))
        else:
            future.set_exception(error)
        return future

    def publish_many(self, topic: str, messages: Any) -> list[concurrent.futures.Future]:
        return [self.publish(topic, data, **attributes) for data, attributes in messages]


@pytest.fixture(scope="module")
def classifier(tiny_model: Path) -> Classifier:
    return load_classifier(tiny_model)


@pytest.fixture
def settings() -> Settings:
    return load_settings({})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    store = StateStore(tmp_path / "state.sqlite3")
    yield store
    store.close()


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def handler(
    classifier: Classifier, store: StateStore, publisher: RecordingPublisher, settings: Settings
) -> BatchHandler:
    return BatchHandler(
        classifier,
        store,
        publisher,
        DirectAcker(),
        settings.pipeline.max_message_bytes,
        settings.pipeline.window_seconds,
        "predictions",
        "dlq",
        RecentMistakes(),
        publish_timeout_s=5,
    )


def image(split: dataset.Split, index: int, message_id: str, key: str | None = "same") -> FakeDelivery:
    image_id = f"img-{index}"
    attributes = {} if key is None else {"key": image_id if key == "same" else key}
    return FakeDelivery(encode_image(image_id, split.images[index], int(split.labels[index])), attributes, message_id)


def test_a_batch_is_published_counted_then_acked(
    handler: BatchHandler, publisher: RecordingPublisher, store: StateStore, test_split: dataset.Split
) -> None:
    batch = [image(test_split, i, f"m{i}") for i in range(10)]
    batch.append(FakeDelivery(b"\xff", {"key": "x", "origin": "test"}, "m-bad"))
    handler.handle(batch)

    predictions = [s for s in publisher.sent if s[0] == "predictions"]
    assert [attrs["id"] for _, _, attrs in predictions] == [f"img-{i}" for i in range(10)]
    [(topic, data, attrs)] = [s for s in publisher.sent if s[0] == "dlq"]
    assert data == b"\xff" and attrs["origin"] == "test" and attrs["error_kind"] == "not_utf8" and attrs["error"]
    assert store.scores.images == 10 and store.scores.rejected == {"not_utf8": 1}
    assert all(d.acks == 1 and d.nacks == 0 for d in batch)


def test_redelivered_and_duplicate_ids_are_acked_not_counted_or_published(
    handler: BatchHandler, publisher: RecordingPublisher, store: StateStore, test_split: dataset.Split
) -> None:
    first = [image(test_split, i, f"m{i}") for i in range(5)] + [FakeDelivery(b"", {"key": "e"}, "m-empty")]
    handler.handle(first)
    sent = len(publisher.sent)

    again = [image(test_split, i, f"m{i}") for i in range(5)] + [FakeDelivery(b"", {"key": "e"}, "m-empty")]
    new_ids = [
        image(test_split, 2, "m-new-message-same-image"),
        image(test_split, 7, "m7"),
        image(test_split, 7, "m7-duplicate-in-batch", key=None),
    ]
    handler.handle(again + new_ids)

    assert len(publisher.sent) == sent + 1, "only img-7 is new"
    assert publisher.sent[-1][2]["id"] == "img-7"
    assert store.scores.images == 6 and store.scores.rejected == {"empty": 1}
    assert store.counted() == 7
    assert all(d.acks == 1 for d in again + new_ids)


def test_a_failed_publish_leaves_the_batch_uncounted_and_unacked(
    handler: BatchHandler, publisher: RecordingPublisher, store: StateStore, test_split: dataset.Split
) -> None:
    publisher.fail = lambda topic, data: gexc.ServiceUnavailable("down")
    batch = [image(test_split, i, f"m{i}") for i in range(3)]
    with pytest.raises(TransientError):
        handler.handle(batch)
    assert store.counted() == 0 and all(d.acks == d.nacks == 0 for d in batch)

    publisher.fail = lambda topic, data: None
    handler.handle(batch)
    assert store.scores.images == 3 and all(d.acks == 1 for d in batch)


def test_a_message_that_keeps_failing_is_nacked_alone(
    handler: BatchHandler, publisher: RecordingPublisher, store: StateStore, test_split: dataset.Split
) -> None:
    poison = image(test_split, 4, "m4")
    publisher.fail = lambda topic, data: gexc.InvalidArgument("refused") if b'"id":"img-4"' in data else None
    batch = [image(test_split, i, f"m{i}") for i in range(4)] + [poison]
    handler.handle(batch)
    assert poison.nacks == 1 and poison.acks == 0
    assert all(d.acks == 1 and d.nacks == 0 for d in batch[:4])
    assert store.scores.images == 4


def test_publish_wait_ends_at_the_shutdown_deadline(
    handler: BatchHandler, store: StateStore, test_split: dataset.Split
) -> None:
    class Hanging:
        def publish(self, topic: str, data: bytes, **attrs: str) -> concurrent.futures.Future:
            return concurrent.futures.Future()

        def publish_many(self, topic: str, messages: Any) -> list[concurrent.futures.Future]:
            return [concurrent.futures.Future()]

    handler.publisher = Hanging()
    handler.deadline = time.monotonic() + 0.3
    started = time.monotonic()
    with pytest.raises(TransientError):
        handler.handle([image(test_split, 0, "m0")])
    assert time.monotonic() - started < 2 and store.counted() == 0


class RecordingHandler:
    def __init__(self, fail_times: int = 0) -> None:
        self.batches: list[list[Any]] = []
        self.fail_times = fail_times
        self.deadline: float | None = None
        self.done = threading.Event()

    def handle(self, batch: list[Any]) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise TransientError("outage")
        self.batches.append(batch)
        if sum(len(b) for b in self.batches) >= 1200:
            self.done.set()


@dataclass
class Queued:
    """What the batcher sees of a delivery: its bytes (sized for the image budget)."""

    name: Any
    data: bytes = b"{}"


def test_batcher_takes_up_to_batch_size_then_lingers() -> None:
    recorder = RecordingHandler()
    batcher = Batcher(recorder, batch_size=500, linger_s=0.05)  # type: ignore[arg-type]
    for n in range(1200):
        batcher.put(Queued(n))  # type: ignore[arg-type]
    batcher.start()
    assert recorder.done.wait(5)
    assert [len(b) for b in recorder.batches] == [500, 500, 200]
    assert [q.name for b in recorder.batches for q in b] == list(range(1200))

    batcher.put(Queued("late"))  # type: ignore[arg-type]
    batcher.drain(2.0)
    batcher.join(5)
    assert not batcher.is_alive() and recorder.batches[-1] == [Queued("late")] and batcher.error is None


def test_batcher_stops_a_batch_at_its_image_budget() -> None:
    """Batch records: a batch ends once it holds about max_images images (a record whole)."""
    recorder = RecordingHandler()
    batcher = Batcher(recorder, batch_size=500, linger_s=0.05, max_images=1000)  # type: ignore[arg-type]
    record = encode_batch([str(i) for i in range(400)], bytes(400 * 784))
    for n in range(6):
        batcher.put(Queued(n, record))  # type: ignore[arg-type]
    batcher.start()
    deadline = time.monotonic() + 5
    while sum(len(b) for b in recorder.batches) < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    batcher.drain(1.0)
    batcher.join(5)
    assert [[q.name for q in b] for b in recorder.batches] == [[0, 1, 2], [3, 4, 5]]


def test_batcher_retries_a_transient_failure_then_gives_up_at_shutdown() -> None:
    recorder = RecordingHandler(fail_times=2)
    batcher = Batcher(recorder, batch_size=10, linger_s=0.01)  # type: ignore[arg-type]
    batcher.put(Queued("a"))  # type: ignore[arg-type]
    batcher.start()
    deadline = time.monotonic() + 10
    while not recorder.batches and time.monotonic() < deadline:
        time.sleep(0.05)
    assert recorder.batches == [[Queued("a")]], "handled after two failed attempts"

    recorder.fail_times = 10**6
    batcher.put(Queued("b"))  # type: ignore[arg-type]
    time.sleep(0.2)
    batcher.drain(1.0)
    batcher.join(5)
    assert not batcher.is_alive() and recorder.batches == [[Queued("a")]], "left for redelivery, not handled"


def test_batch_records_are_counted_per_image_and_a_redelivery_is_acked_uncounted(
    handler: BatchHandler, publisher: RecordingPublisher, store: StateStore, test_split: dataset.Split
) -> None:
    """A record of 8 images, one with a bad label: 7 predictions, that image dead-lettered
    alone (batch_index); a malformed record dead-lettered whole; redelivered, nothing changes."""
    labels: list[int | None] = [int(x) for x in test_split.labels[:8]]
    record = encode_batch([f"b-{i}" for i in range(8)], test_split.images[:8], labels)
    record = record.replace(f'"labels":[{labels[0]},{labels[1]},'.encode(), f'"labels":[{labels[0]},-1,'.encode())
    good = FakeDelivery(record, {"origin": "gateway"}, "m-record")
    broken = FakeDelivery(encode_batch(["x", "y"], test_split.images[:1].tobytes() * 2)[:-5], {}, "m-broken")
    handler.handle([good, broken])

    predictions = [s for s in publisher.sent if s[0] == "predictions"]
    assert [attrs["id"] for _, _, attrs in predictions] == [f"b-{i}" for i in range(8) if i != 1]
    dead = {attrs.get("batch_index"): (data, attrs) for topic, data, attrs in publisher.sent if topic == "dlq"}
    data, attrs = dead["1"]
    assert attrs["error_kind"] == "bad_label" and attrs["origin"] == "gateway"
    assert json.loads(data)["id"] == "b-1" and json.loads(data)["label"] == -1
    data, attrs = dead[None]
    assert data == broken.data and attrs["error_kind"] == "not_json"
    assert store.scores.images == 7 and store.scores.rejected == {"bad_label": 1, "not_json": 1}
    assert good.acks == 1 and broken.acks == 1

    sent = len(publisher.sent)
    again = [FakeDelivery(good.data, good.attributes, "m-record"), FakeDelivery(broken.data, {}, "m-broken")]
    handler.handle(again)  # redelivered after a crash between commit and ack
    assert len(publisher.sent) == sent and all(d.acks == 1 for d in again)
    assert store.scores.images == 7 and store.scores.rejected == {"bad_label": 1, "not_json": 1}


@pytest.mark.parametrize(
    ("messages", "size", "streams", "expected"),
    [
        (2000, 64 << 20, 1, [(2000, 64 << 20)]),
        (2000, 64 << 20, 4, [(500, 16 << 20)] * 4),
        (100, 4096, 3, [(34, 1365), (33, 1365), (33, 1365)]),
        (2, 4096, 4, [(1, 2048), (1, 2048)]),  # never a stream without room for one message
    ],
)
def test_stream_flow_limits_share_the_totals(
    messages: int, size: int, streams: int, expected: list[tuple[int, int]]
) -> None:
    limits = stream_flow_limits(messages, size, streams)
    assert limits == expected
    assert sum(m for m, _ in limits) == messages and sum(b for _, b in limits) <= size


class FakeStream:
    """A streaming pull future: cancelled by ``cancel``; ``error`` is what it ended with."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def result(self, timeout: float | None = None) -> None:
        if self.error is not None:
            raise self.error
        raise concurrent.futures.CancelledError()


class UnarySubscriber:
    def __init__(self) -> None:
        self.acked: list[str] = []

    def acknowledge(self, subscription: str, ack_ids: list[str]) -> None:
        self.acked += ack_ids


def test_closing_several_streams_cancels_all_then_acks_unary() -> None:
    subscriber = UnarySubscriber()
    acker = StreamAcker(subscriber, "projects/p/subscriptions/s")
    on_stream = [FakeDelivery(b"", {}, "m1", ack_id="a1"), FakeDelivery(b"", {}, "m2", ack_id="a2")]
    acker.ack(on_stream)
    assert [d.acks for d in on_stream] == [1, 1] and subscriber.acked == [], "on each message's own stream"

    failed = gexc.NotFound("subscription gone")
    streams = [FakeStream(), FakeStream(failed), FakeStream()]
    assert acker.close_streams(streams) is failed
    assert all(stream.cancelled for stream in streams)

    after = [FakeDelivery(b"", {}, f"m{i}", ack_id=f"late-{i}") for i in range(3)]
    acker.ack(after)
    acker.nack(after)
    assert subscriber.acked == ["late-0", "late-1", "late-2"]
    assert all(d.acks == 0 and d.nacks == 0 for d in after), "no stream left to ack or nack on"


def test_labels_are_dead_lettered_counted_and_acked_once(store: StateStore, publisher: RecordingPublisher) -> None:
    """The label handler: malformed labels to the DLQ (with ``stream: labels``) before the
    commit, labels counted once however often Pub/Sub delivers them, every message acked."""
    from fmnist_faust.core.contract import encode_label
    from pubsub_bridge.handler import LabelHandler

    handler = LabelHandler(store, publisher, DirectAcker(), 10, "dlq", publish_timeout_s=5)
    batch = [
        FakeDelivery(encode_label("a", 3), {"key": "a"}, "m1"),
        FakeDelivery(b'{"id": "b", "label": 11}', {"key": "b"}, "m2"),
        FakeDelivery(encode_label("c", 4), {"key": "not-c"}, "m3"),
        FakeDelivery(encode_label("a", 5), {}, "m4"),
    ]
    handler.handle(batch)
    handler.handle(batch[:2])  # redelivered
    assert [d.acks for d in batch] == [2, 2, 1, 1]
    assert [(topic, attrs["error_kind"], attrs["stream"]) for topic, _, attrs in publisher.sent] == [
        ("dlq", "bad_label", "labels"),
        ("dlq", "key_mismatch", "labels"),
    ]
    labels = store.scores.report(None)["labels"]
    assert (labels["awaiting_image"], labels["repeated"], labels["rejected_by_kind"]) == (
        1,
        1,
        {"bad_label": 1, "key_mismatch": 1},
    )
