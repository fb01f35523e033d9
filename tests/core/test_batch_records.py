"""Batch records (``ids``: N images in one message): the format, its faults, and how
classify_batch expands them into one outcome per image.

Record-level faults are in the shared catalogue (tests/malformed_catalogue.py, ``batch_*``)
and checked by test_contract.py like every other malformed message; here: valid records,
image-level faults (one image rejected, the others classified) and the mapping back to
the carrying message.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmnist_faust.core.contract import (
    ERROR_KINDS,
    IMAGE_BYTES,
    MAX_REASON_CHARS,
    ImageBatch,
    ImageMessage,
    InvalidMessage,
    Prediction,
    dead_letter_attributes,
    decode_image,
    decode_record,
    encode_batch,
    encode_image,
    image_faults,
)
from fmnist_faust.core.model import load_classifier
from fmnist_faust.core.pipeline import RawMessage, classify_batch, repeats
from fmnist_faust.core.scores import Scores
from malformed_catalogue import GOOD_PIXELS

PIXELS = np.frombuffer(GOOD_PIXELS * 3, dtype=np.uint8).reshape(3, IMAGE_BYTES).copy()
PIXELS[1] = 255 - PIXELS[1]  # three distinct images
PIXELS[2] = PIXELS[2][::-1]


def _record(**fields: Any) -> bytes:
    obj: dict[str, Any] = {
        "ids": ["a", "b", "c"],
        "labels": [1, 2, 3],
        "pixels": base64.b64encode(PIXELS.tobytes()).decode(),
        "sent_at": 5.0,
    }
    obj.update(fields)
    return json.dumps(obj).encode()


def test_encode_batch_round_trips() -> None:
    value = encode_batch(["a", "b", "c"], PIXELS, [1, 2, None], sent_at=12.5)
    batch = decode_record(value, key=b"any-key-picks-the-partition")
    assert isinstance(batch, ImageBatch)
    assert batch.ids == ["a", "b", "c"] and batch.labels == [1, 2, None] and batch.sent_at == 12.5
    assert batch.pixels.shape == (3, IMAGE_BYTES) and batch.pixels.dtype == np.uint8
    assert np.array_equal(batch.pixels, PIXELS)
    assert image_faults(batch) == {}
    # without labels: every label is None; from raw bytes as well as an array
    unlabelled = decode_record(encode_batch(["x"], GOOD_PIXELS))
    assert isinstance(unlabelled, ImageBatch) and unlabelled.labels == [None] and unlabelled.sent_at is None


def test_one_image_form_is_still_the_default() -> None:
    message = decode_record(encode_image("one", GOOD_PIXELS, 4), b"one")
    assert isinstance(message, ImageMessage) and message.id == "one" and message.label == 4
    with pytest.raises(InvalidMessage, match="key_mismatch"):
        decode_record(encode_image("one", GOOD_PIXELS), b"other")


def test_encode_batch_refuses_inconsistent_sizes() -> None:
    with pytest.raises(ValueError):
        encode_batch(["a", "b"], GOOD_PIXELS)
    with pytest.raises(ValueError):
        encode_batch(["a"], GOOD_PIXELS, labels=[1, 2])
    with pytest.raises(ValueError):
        encode_batch([], b"")


def test_limits_are_parameters() -> None:
    value = _record()
    with pytest.raises(InvalidMessage, match="too_many_images"):
        decode_record(value, max_images=2)
    assert isinstance(decode_record(value, max_images=3), ImageBatch)
    with pytest.raises(InvalidMessage, match="too_large"):
        decode_record(value, max_bytes=len(value) - 1)


@pytest.mark.parametrize(
    ("ids", "labels", "faulty"),
    [
        (["a", 7, "c"], [1, 2, 3], {1: "bad_id"}),
        (["a", "", "c"], [1, 2, 3], {1: "bad_id"}),
        (["a", "x" * 129, None], [1, 2, 3], {1: "bad_id", 2: "bad_id"}),
        (["a", "b\ud800", "c"], [1, 2, 3], {1: "bad_id"}),
        (["a", "b", "c"], [1, 10, "3"], {1: "bad_label", 2: "bad_label"}),
        (["a", "b", "c"], [True, 2, 3.0], {0: "bad_label", 2: "bad_label"}),
        ([5, "b", "c"], [11, 2, 3], {0: "bad_id"}),  # the id is reported first
    ],
)
def test_image_faults_reject_only_their_image(ids: list[Any], labels: list[Any], faulty: dict[int, str]) -> None:
    batch = decode_record(_record(ids=ids, labels=labels))
    assert isinstance(batch, ImageBatch)
    faults = image_faults(batch)
    assert {index: fault.kind for index, fault in faults.items()} == faulty
    for index, fault in faults.items():
        assert fault.index == index and f"image {index}" in fault.reason and len(fault.reason) <= MAX_REASON_CHARS
        assert dead_letter_attributes(fault)["batch_index"] == str(index)
        # the dead letter is that image alone, in the one-image form: it fails the same way
        assert fault.dead_letter_value(b"the record") == fault.image
        assert fault.image is not None
        with pytest.raises(InvalidMessage) as again:
            decode_image(fault.image)
        assert again.value.kind == fault.kind
        alone = json.loads(fault.image)
        assert base64.b64decode(alone["pixels"]) == PIXELS[index].tobytes() and alone["sent_at"] == 5.0


def test_a_whole_message_fault_keeps_the_original_bytes() -> None:
    error = InvalidMessage("bad_ids", "ids must be a list")
    assert error.index is None and error.dead_letter_value(b"orig") == b"orig"
    assert "batch_index" not in dead_letter_attributes(error)


def test_classify_batch_expands_records_and_maps_outcomes_to_messages(tiny_model: Path, test_split) -> None:
    classifier = load_classifier(tiny_model)
    images, labels = test_split.images[:10], test_split.labels[:10].tolist()
    single = RawMessage(encode_image("s-0", images[0], labels[0], sent_at=1.0), key="s-0", timestamp=100.0)
    record = RawMessage(encode_batch([f"b-{i}" for i in range(1, 6)], images[1:6], labels[1:6], 1.0), timestamp=200.0)
    broken = RawMessage(encode_batch(["x-0", "x-1"], images[6:8])[:-30], key=b"k")
    faulty_ids: list[Any] = ["f-8", 99]
    faulty = RawMessage(
        json.dumps(
            {"ids": faulty_ids, "labels": labels[8:10], "pixels": base64.b64encode(images[8:10].tobytes()).decode()}
        ).encode(),
        timestamp=300.0,
    )
    result = classify_batch(classifier, [single, record, broken, faulty], clock=lambda: 2.0)

    assert result.sources == [0, 1, 1, 1, 1, 1, 2, 3, 3]
    assert [result.messages[i] for i in range(len(result.outcomes))] == [
        single,
        *[record] * 5,
        broken,
        faulty,
        faulty,
    ]
    predictions = [o for o in result.outcomes if isinstance(o, Prediction)]
    assert [p.id for p in predictions] == ["s-0", "b-1", "b-2", "b-3", "b-4", "b-5", "f-8"]
    offline, _ = classifier.predict(images[[0, 1, 2, 3, 4, 5, 8]])
    assert [p.predicted for p in predictions] == offline.tolist()
    assert all(p.latency_ms == 1000.0 for p in predictions[:6]) and predictions[6].latency_ms is None
    assert [p.label for p in predictions] == [labels[i] for i in (0, 1, 2, 3, 4, 5, 8)]
    broken_outcome, bad_image = result.outcomes[6], result.outcomes[8]
    assert isinstance(broken_outcome, InvalidMessage) and broken_outcome.kind == "not_json"
    assert broken_outcome.index is None
    assert isinstance(bad_image, InvalidMessage) and bad_image.kind == "bad_id" and bad_image.index == 1
    assert result.pixels[8] is None and result.pixels[6] is None
    assert np.array_equal(result.pixels[3], images[3])

    scores = Scores()
    result.apply_to(scores, window_seconds=10)
    assert scores.labeled == 7 and scores.rejected == {"not_json": 1, "bad_id": 1}
    assert sorted(scores.windows) == [100, 200, 300]  # each image is stamped with its record's time
    assert scores.windows[200][0] == 5

    kept = result.subset(lambda i: i != 2)
    assert kept.sources == [0, 1, 1, 1, 1, 2, 3, 3] and kept.messages[2] is record


def test_repeated_ids_in_one_record_count_once(tiny_model: Path, test_split) -> None:
    classifier = load_classifier(tiny_model)
    record = RawMessage(encode_batch(["d", "e", "d"], test_split.images[:3], [1, 1, 2]))
    result = classify_batch(classifier, [record])
    keys = [o.id if isinstance(o, Prediction) else None for o in result.outcomes]
    assert repeats(keys, lambda _i, _k: False) == {2}


def test_a_batch_record_is_decoded_without_per_image_json(tiny_model: Path, test_split) -> None:
    """One predict call for singles and records together; pixels are views of the blob."""
    classifier = load_classifier(tiny_model)
    calls: list[int] = []
    real = classifier.predict

    def counting(pixels: np.ndarray) -> Any:
        calls.append(len(pixels))
        return real(pixels)

    classifier.predict = counting  # type: ignore[method-assign]
    messages = [
        RawMessage(encode_batch([f"r{r}-{i}" for i in range(100)], test_split.images[:100])) for r in range(3)
    ] + [RawMessage(encode_image("one", test_split.images[0]))]
    result = classify_batch(classifier, messages)
    assert calls == [301] and len(result.outcomes) == 301


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    field=st.sampled_from(["ids", "labels", "pixels", "sent_at"]),
    replacement=JSON_VALUES,
)
def test_fuzz_one_corrupted_field_of_a_batch_record(field: str, replacement: Any) -> None:
    """Whatever one field holds, decoding gives a record whose faults are per image, or
    rejects it whole with a known kind; nothing else escapes."""
    try:
        batch = decode_record(_record(**{field: replacement}))
    except InvalidMessage as error:
        assert error.kind in ERROR_KINDS and error.index is None
        return
    assert isinstance(batch, ImageBatch)
    assert batch.pixels.shape == (len(batch.ids), IMAGE_BYTES) and len(batch.labels) == len(batch.ids)
    for index, fault in image_faults(batch).items():
        assert fault.kind in ("bad_id", "bad_label") and fault.index == index
