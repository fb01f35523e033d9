"""Delayed labels in the core: the label message contract, the join rule and its counting."""

from __future__ import annotations

import numpy as np
import pytest

from fmnist_faust.core.contract import TICK_VALUE, InvalidMessage, decode_label, encode_label
from fmnist_faust.core.labels import Entry, Guess, JoinTally, Label, expired, join_batch
from fmnist_faust.core.rollout import ModelTally
from fmnist_faust.core.scores import Scores

WAIT = 100.0


def test_a_label_message_decodes_and_a_tick_is_none() -> None:
    assert decode_label(encode_label("a", 3), b"a") == ("a", 3)
    assert decode_label(b'{"id": "a", "label": 0, "by": "a person"}', None) == ("a", 0)  # extras ignored
    assert decode_label(TICK_VALUE) is None


@pytest.mark.parametrize(
    ("value", "key", "kind"),
    [
        (b"", None, "empty"),
        (b"\xff", None, "not_utf8"),
        (b"{nope", None, "not_json"),
        (b"[1]", None, "not_object"),
        (b'{"label": 1}', None, "bad_id"),
        (b'{"id": "", "label": 1}', None, "bad_id"),
        (b'{"id": "a"}', None, "bad_label"),
        (b'{"id": "a", "label": null}', None, "bad_label"),
        (b'{"id": "a", "label": 10}', None, "bad_label"),
        (b'{"id": "a", "label": true}', None, "bad_label"),
        (b'{"id": "a", "label": 1}', b"b", "key_mismatch"),
        (b'{"id": "a", "label": 1, "x": "' + b"y" * 2000 + b'"}', None, "too_large"),
    ],
)
def test_a_malformed_label_names_its_fault(value: bytes, key: bytes | None, kind: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        decode_label(value, key, max_bytes=1024)
    assert caught.value.kind == kind and caught.value.reason


def run(batch_entries: dict[str, Entry], guesses=(), labels=(), known=()) -> tuple[dict[str, Entry], JoinTally]:
    return join_batch(batch_entries.get, list(guesses), list(labels), set(known).__contains__)


def test_a_prediction_waits_and_its_label_joins_it() -> None:
    changes, tally = run({}, [Guess("a", 3, "v1", 10.0)])
    assert changes == {"a": Entry(10.0, 3, "v1", None)} and not tally
    changes, tally = run(changes, labels=[Label("a", 5, 20.0)])
    assert changes == {"a": Entry(10.0, 3, "v1", 5)}  # it lives on, to recognise a second label
    assert [tuple(j) for j in tally.joined] == [(5, 3, "v1", 20.0, False)]


def test_a_label_that_comes_first_waits_and_its_image_joins_it() -> None:
    changes, tally = run({}, labels=[Label("a", 5, 10.0)])
    assert changes == {"a": Entry(10.0, None, None, 5)} and tally.awaiting_image == 1
    changes, tally = run(changes, [Guess("a", 5, "v2", 30.0)])
    assert changes["a"] == Entry(10.0, 5, "v2", 5)  # still the first sighting's life
    assert [tuple(j) for j in tally.joined] == [(5, 5, "v2", 30.0, True)]


def test_the_first_label_wins() -> None:
    waiting = {"a": Entry(1.0, None, None, 5)}
    joined = {"a": Entry(1.0, 3, "v", 5)}
    for entries in (waiting, joined):
        changes, tally = run(entries, labels=[Label("a", 9, 2.0)])
        assert changes == {} and tally.repeated == 1 and not tally.joined
    changes, tally = run({"a": Entry(1.0, 3, "v", None)}, labels=[Label("a", 3, 2.0), Label("a", 4, 2.0)])
    assert changes["a"].label == 3 and len(tally.joined) == 1 and tally.repeated == 1  # within one batch too


def test_a_label_for_a_counted_image_without_entry_is_late_and_one_for_an_unknown_id_waits() -> None:
    changes, tally = run({}, labels=[Label("seen", 1, 5.0), Label("new", 2, 5.0)], known={"seen"})
    assert tally.late == 1 and tally.awaiting_image == 1 and list(changes) == ["new"]


def test_in_one_batch_the_predictions_come_first() -> None:
    changes, tally = run({}, [Guess("a", 1, "v", 5.0)], [Label("a", 1, 5.0)])
    assert changes["a"] == Entry(5.0, 1, "v", 1) and len(tally.joined) == 1 and tally.awaiting_image == 0


def test_a_second_image_of_a_living_id_cannot_wait_too() -> None:
    changes, tally = run({"a": Entry(1.0, 3, "v", None)}, [Guess("a", 4, "v", 2.0)])
    assert changes == {} and tally.label_expired == {"v": 1}


def test_expiry_counts_what_never_met() -> None:
    tally = expired([Entry(1.0, 3, "v1", None), Entry(1.0, None, None, 4), Entry(1.0, 3, "v2", 3)])
    assert tally.label_expired == {"v1": 1} and tally.labels_expired == 1 and not tally.joined
    assert Entry(1.0).deadline(WAIT) == 101.0


def test_counting_moves_images_from_waiting_into_the_accuracy_by_label_arrival() -> None:
    scores, tally = Scores(), ModelTally()
    # three images counted without a label (windows of 10 s at t=100), by version v1
    from fmnist_faust.core.contract import Prediction
    from fmnist_faust.core.pipeline import BatchResult, RawMessage
    from fmnist_faust.core.rollout import count_batch

    outcomes = [Prediction(f"i{n}", n, 0.9, None, "v1", None) for n in range(3)]
    batch = BatchResult([RawMessage(b"", None, 100.0)] * 3, list(outcomes), [None] * 3)
    count_batch(scores, tally, batch, [0, 1, 2], "v1", None, 10)
    assert (scores.images, scores.labeled, scores.awaiting_label) == (3, 0, 3)

    changes, joins = run(
        {"i0": Entry(100.0, 0, "v1"), "i1": Entry(100.0, 1, "v1"), "i2": Entry(100.0, 2, "v1")},
        labels=[Label("i0", 0, 125.0), Label("i1", 7, 131.0), Label("nobody", 4, 131.0)],
    )
    joins.merge(expired([changes["nobody"], Entry(100.0, 2, "v1")]))  # i2's wait ends, and the stray label's
    joins.rejected["bad_label"] += 2
    joins.count_into(scores, tally, 10)

    report = scores.report("v1")
    assert (report["images"], report["labeled"], report["correct"]) == (3, 2, 1)
    assert (report["awaiting_label"], report["label_expired"]) == (0, 1)
    assert report["images"] == report["labeled"] + report["awaiting_label"] + report["label_expired"]
    assert report["labels"] == {
        "received": 3,
        "joined": 2,
        "awaiting_image": 0,
        "expired": 1,
        "repeated": 0,
        "late": 0,
        "rejected": 2,
        "rejected_by_kind": {"bad_label": 2},
    }
    assert scores.confusion[0, 0] == 1 and scores.confusion[7, 1] == 1
    assert scores.windows == {100: [3, 0, 0], 120: [0, 1, 1], 130: [0, 1, 0]}  # labels by their arrival
    part = tally.live["v1"].scores
    assert (part.images, part.labeled, part.awaiting_label, part.label_expired) == (3, 2, 0, 1)
    assert part.windows == {}
    assert np.array_equal(part.confusion, scores.confusion)


def test_scores_keep_the_label_counts_through_dicts_and_merges() -> None:
    scores = Scores()
    scores.record([None, 1], [2, 1], [0.0, 0.0], 10)
    scores.expire_waiting(1)
    scores.count_labels("repeated", 2)
    scores.reject_label("not_json")
    again = Scores.from_dict(scores.to_dict())
    assert again.to_dict() == scores.to_dict()
    merged = Scores().merge(scores).merge(again)
    assert merged.label_expired == 2 and merged.labels == {"repeated": 4} and merged.labels_rejected == {"not_json": 2}
    legacy = Scores.from_dict({"confusion": np.zeros((10, 10), int).tolist(), "unlabeled": 4})
    assert (legacy.images, legacy.awaiting_label, legacy.label_expired) == (4, 0, 4)  # they never waited
    assert "labels" not in Scores().to_dict()  # a row without labels stays as small as before
