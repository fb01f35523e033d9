"""Bad input on the real broker: every catalogue entry dead-lettered, counted, harmless.

A Faust worker subprocess consumes good labelled images interleaved with every entry of
tests/malformed_catalogue.py (produced with aiokafka directly, keys set). Each bad
message must land on the DLQ with its original key and bytes and the headers
``error_kind``/``error``; ``/accuracy/`` must count the rejections by kind and every good
image exactly once (duplicate ids too); the worker must stay up. No mocks.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fmnist_faust.config import load_settings
from fmnist_faust.core.contract import InvalidMessage, decode_prediction, decode_record, encode_image
from fmnist_faust.core.model import load_classifier
from fmnist_faust.kafka_admin import ensure_topics_sync
from malformed_catalogue import Case, catalogue
from support import consume_topics, wait_until

pytestmark = pytest.mark.kafka

GOOD = 240  # good labelled images, one catalogue entry after every few of them
DUPLICATES = 12  # ids re-sent as distinct messages: half identical, half with another label
BIG = 4 * 1024 * 1024


async def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=BIG, linger_ms=5)
    await producer.start()
    try:
        pending = [await producer.send(topic, value=value, key=key) for key, value in messages]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def _expected_error(case: Case) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as caught:
        decode_record(case.value, case.key)
    return caught.value


@pytest.mark.timeout(120)
def test_catalogue_is_dead_lettered_counted_and_harmless(
    start_worker: Any,
    worker_env: dict[str, str],
    kafka_bootstrap: str,
    tiny_model: Path,
    test_split: Any,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    marker = tmp_path / "pwned-by-a-pickle"
    cases = catalogue(marker_dir=str(marker))
    images, labels = test_split.images[:GOOD], test_split.labels[:GOOD].astype(int)
    ids = [f"good-{i}" for i in range(GOOD)]
    good = [(i.encode(), encode_image(i, img, int(lab), time.time())) for i, img, lab in zip(ids, images, labels)]
    # Distinct messages re-using ids already sent: identical bytes, or another label
    # (must not change the score: the first message with an id is the one counted).
    resent_at = range(0, GOOD, GOOD // DUPLICATES)[:DUPLICATES]
    duplicates = [
        good[i] if n % 2 else (ids[i].encode(), encode_image(ids[i], images[i], (int(labels[i]) + 1) % 10))
        for n, i in enumerate(resent_at)
    ]
    stream: list[tuple[bytes | None, bytes | None]] = []
    bad = iter(cases)
    step = max(1, GOOD // len(cases))
    for index, message in enumerate(good):
        stream.append(message)
        if index % step == step - 1:
            case = next(bad, None)
            if case is not None:
                stream.append((case.key, case.value))
    stream.extend((case.key, case.value) for case in bad)  # any left over
    stream.extend(duplicates)
    assert len(stream) == GOOD + len(cases) + DUPLICATES

    settings = load_settings({**worker_env, "FMNIST_PARTITIONS": "4"})
    ensure_topics_sync(settings)
    worker = start_worker()
    asyncio.run(_produce(kafka_bootstrap, settings.topics.images, stream))

    report = wait_until(
        lambda: (r := worker.accuracy())["images"] >= GOOD and r["rejected"] >= len(cases) and r,
        timeout=60,
        what="every good image and every bad message counted",
    )
    records = consume_topics(
        kafka_bootstrap,
        {settings.topics.dlq: len(cases), settings.topics.predictions: GOOD},
        timeout=30,
        settle=1.5,
        fetch_bytes=BIG,
    )
    report = worker.accuracy()  # after the settle time: nothing counted late or twice

    # --- every bad message is on the DLQ, untouched, with precise headers ---
    dead = records[settings.topics.dlq]
    assert len(dead) == len(cases), f"{len(dead)} dead letters for {len(cases)} bad messages"
    by_message = {(record.key, record.value): record for record in dead}
    assert len(by_message) == len(dead), "a bad message was dead-lettered twice"
    for case in cases:  # found by its original key and bytes: both must be untouched
        record = by_message.get((case.key, case.value))
        assert record is not None, f"{case.name}: not dead-lettered with its original key and bytes"
        headers = dict(record.headers)
        assert set(headers) == {"error_kind", "error"}, case.name
        assert headers["error_kind"].decode() == case.kind, case.name
        assert headers["error"].decode() == _expected_error(case).reason, case.name

    # --- counted exactly: rejections by kind, good images once (duplicate ids once) ---
    kinds = Counter(case.kind for case in cases)
    assert report["rejected"] == len(cases)
    assert report["rejected_by_kind"] == dict(sorted(kinds.items()))
    predicted, _ = load_classifier(tiny_model).predict(images)
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    assert report["images"] == GOOD and report["labeled"] == GOOD
    assert report["confusion"] == confusion.tolist()
    assert report["correct"] == int((predicted == labels).sum())

    # --- one prediction per id: a re-sent id is not published again ---
    predictions = records[settings.topics.predictions]
    per_id = Counter(record.key.decode() for record in predictions)
    assert set(per_id) == set(ids) and set(per_id.values()) == {1}
    assert worker.metric("fmnist_duplicates_total") == DUPLICATES
    for record in predictions:
        prediction = decode_prediction(record.value)
        assert prediction["id"] == record.key.decode()
        assert prediction["predicted"] == int(predicted[ids.index(prediction["id"])])

    # --- harmless: still running, nothing was unpickled, within the time budget ---
    assert worker.proc is not None and worker.proc.poll() is None, "the worker died"
    assert worker.accuracy()["images"] == GOOD
    assert not marker.exists(), "a pickle from the topic was executed"
    assert "Traceback" not in worker.log_path.read_text(errors="replace")
    assert time.monotonic() - started < 60
