"""Scores: counting, merging, serialisation and the /accuracy/ document."""

import numpy as np

from fmnist_faust.core.contract import CLASS_NAMES
from fmnist_faust.core.scores import MAX_WINDOWS, Scores


def test_record_counts_labelled_unlabelled_and_windows() -> None:
    scores = Scores()
    scores.record([0, 1, None, 1], [0, 2, 5, 1], [100.0, 101.0, 109.9, 110.0], window_seconds=10)
    assert scores.images == 4
    assert scores.labeled == 3
    assert scores.correct == 2
    assert scores.unlabeled == 1
    assert scores.confusion[1, 2] == 1
    assert scores.windows == {100: [3, 2, 1], 110: [1, 1, 1]}


def test_report_shape_and_derived_recall() -> None:
    scores = Scores()
    scores.record([0, 0, 3], [0, 1, 3], [0.0, 0.0, 0.0], 10)
    scores.reject("not_json", 2)
    report = scores.report("mlp-test")
    assert report["images"] == 3
    assert report["labeled"] == 3 and report["correct"] == 2
    assert report["accuracy"] == 2 / 3
    assert report["rejected"] == 2 and report["rejected_by_kind"] == {"not_json": 2}
    assert list(report["per_class"]) == list(CLASS_NAMES)
    assert report["per_class"]["T-shirt/top"] == {"support": 2, "correct": 1, "recall": 0.5}
    assert report["per_class"]["Bag"]["recall"] is None
    assert np.array(report["confusion"]).shape == (10, 10)
    assert report["model_version"] == "mlp-test"


def test_empty_report_has_null_accuracy() -> None:
    assert Scores().report(None)["accuracy"] is None


def test_round_trip_and_merge() -> None:
    a, b = Scores(), Scores()
    a.record([1, 2], [1, 2], [5.0, 15.0], 10)
    b.record([2, None], [3, 4], [15.0, 25.0], 10)
    b.reject("bad_label")
    restored = Scores.from_dict(a.to_dict())
    assert restored.to_dict() == a.to_dict()
    merged = Scores().merge(a).merge(b)
    assert merged.images == 4 and merged.correct == 2 and merged.rejected == {"bad_label": 1}
    assert merged.windows[10] == [2, 2, 1]


def test_windows_are_bounded() -> None:
    scores = Scores()
    scores.record([0] * (MAX_WINDOWS + 5), [0] * (MAX_WINDOWS + 5), [float(i * 10) for i in range(MAX_WINDOWS + 5)], 10)
    assert len(scores.windows) == MAX_WINDOWS
    assert min(scores.windows) == 50
    series = scores.window_series(10)
    assert series[0]["start"] == 50 and series[-1]["end"] == (MAX_WINDOWS + 4) * 10 + 10
