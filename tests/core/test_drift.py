"""Drift without labels, the core: fixed bins, exact pixel statistics, PSI, bounded windows,
the manifest's reference, and the per-model tally that counts them with the scores."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from prometheus_client import REGISTRY

from fmnist_faust import metrics
from fmnist_faust.core import drift
from fmnist_faust.core.contract import Prediction, encode_batch, encode_image
from fmnist_faust.core.model import load_classifier, manifest_path_for, read_manifest, verify
from fmnist_faust.core.pipeline import BatchResult, RawMessage, classify_batch, classify_isolating
from fmnist_faust.core.registry import ModelRegistry
from fmnist_faust.core.rollout import ModelSwitch, ModelTally, count_batch, shadow_predict
from fmnist_faust.core.scores import Scores

WINDOW = 10


def image(values: list[int]) -> np.ndarray:
    """A 784-pixel image repeating ``values``."""
    return np.resize(np.asarray(values, dtype=np.uint8), 784)


def observed(classifier, images: np.ndarray, timestamps: list[float] | None = None) -> drift.Observations:
    predicted, confidence = classifier.predict(images)
    return drift.Observations.of(predicted, confidence, images, timestamps or [0.0] * len(images))


def test_the_window_vector_has_fixed_bins_per_signal() -> None:
    assert [(s.name, s.bins) for s in drift.SIGNALS] == [
        ("class", 10),
        ("confidence", 13),
        ("intensity", 16),
        ("spread", 16),
    ]
    assert drift.BINS == 55
    assert [s.offset for s in drift.SIGNALS] == [0, 10, 23, 39]


def test_pixel_bins_are_exact_at_the_edges() -> None:
    # black; white; mean exactly 16 (bin 1); mean 15.98 (bin 0); half 0 / half 255: mean 127.5, std 127.5;
    # 0 and 16 alternating: std exactly 8 (spread bin 1); 0 and 15: std 7.5 (bin 0)
    images = np.stack(
        [
            image([0]),
            image([255]),
            image([16]),
            image([16] * 783 + [0]),
            image([0, 255]),
            image([0, 16]),
            image([0, 15]),
        ]
    )
    intensity, spread = drift.pixel_bins(images)
    assert intensity.tolist() == [0, 15, 1, 0, 7, 0, 0]
    assert spread.tolist() == [0, 0, 0, 0, 15, 1, 0]


def test_pixel_bins_agree_with_float_statistics_on_the_test_split(test_split) -> None:
    images = test_split.images[:3000]
    intensity, spread = drift.pixel_bins(images)
    values = images.astype(np.float64)
    assert intensity.tolist() == np.minimum(values.mean(axis=1) // 16, 15).astype(int).tolist()
    assert spread.tolist() == np.minimum(values.std(axis=1) // 8, 15).astype(int).tolist()


def test_confidence_bins_resolve_near_one() -> None:
    assert drift.confidence_bins(np.array([0.1, 0.3, 0.95, 0.9999, 0.99999, 1.0])).tolist() == [0, 1, 8, 11, 12, 12]


def test_psi_is_zero_for_the_same_shares_finite_for_empty_bins_and_grows_with_the_shift() -> None:
    reference = [100, 200, 300, 400]
    assert drift.psi(reference, [10, 20, 30, 40]) == pytest.approx(0.0, abs=1e-3)  # smoothing: not exactly 0
    small, large = drift.psi(reference, [12, 20, 30, 38]), drift.psi(reference, [40, 30, 20, 10])
    assert 0 < small < drift.PSI_WARN < drift.PSI_ALERT < large
    assert np.isfinite(drift.psi(reference, [0, 0, 0, 100])) and np.isfinite(drift.psi([0, 0, 0, 100], reference))
    # PSI = sum((a - e) ln(a / e)) on smoothed shares
    e = (np.array(reference) + 0.5) / 1002
    a = (np.array([40, 30, 20, 10]) + 0.5) / 102
    assert large == pytest.approx(float(np.sum((a - e) * np.log(a / e))))


def test_windows_split_by_timestamp_and_every_signal_counts_every_image(tiny_model, test_split) -> None:
    classifier = load_classifier(tiny_model)
    stamps = [5.0] * 30 + [12.0] * 20 + [29.9] * 10
    windows = drift.DriftWindows()
    windows.record(observed(classifier, test_split.images[:60], stamps), WINDOW)
    assert sorted(windows.counts) == [0, 10, 20]
    for start, images in ((0, 30), (10, 20), (20, 10)):
        assert [int(windows.counts[start][s.span].sum()) for s in drift.SIGNALS] == [images] * 4
    predicted, _ = classifier.predict(test_split.images[:30])
    assert windows.counts[0][:10].tolist() == np.bincount(predicted, minlength=10).tolist()


def test_windows_are_bounded_to_the_newest_max_drift_windows(tiny_model, test_split) -> None:
    classifier = load_classifier(tiny_model)
    windows = drift.DriftWindows()
    count = drift.MAX_DRIFT_WINDOWS + 40
    for start in range(count):  # one window per call, and once more all at once
        windows.record(observed(classifier, test_split.images[start : start + 1], [start * WINDOW + 1.0]), WINDOW)
    assert len(windows.counts) == drift.MAX_DRIFT_WINDOWS
    assert min(windows.counts) == (count - drift.MAX_DRIFT_WINDOWS) * WINDOW
    many = drift.DriftWindows()
    many.record(observed(classifier, test_split.images[:count], [i * WINDOW + 1.0 for i in range(count)]), WINDOW)
    assert sorted(many.counts) == sorted(windows.counts)
    assert len(drift.DriftWindows().merge(many).merge(windows).counts) == drift.MAX_DRIFT_WINDOWS


def test_windows_round_trip_and_another_layout_is_dropped(tiny_model, test_split) -> None:
    windows = drift.DriftWindows()
    windows.record(observed(load_classifier(tiny_model), test_split.images[:50], [1.0] * 25 + [11.0] * 25), WINDOW)
    data = json.loads(json.dumps(windows.to_dict()))
    back = drift.DriftWindows.from_dict(data)
    assert {k: v.tolist() for k, v in back.counts.items()} == {k: v.tolist() for k, v in windows.counts.items()}
    assert drift.DriftWindows.from_dict(None).counts == {}  # a row from before drift
    assert drift.DriftWindows.from_dict(dict(data, layout="class:10")).counts == {}
    with pytest.raises(ValueError, match="55 counts"):
        drift.DriftWindows.from_dict({"layout": drift.LAYOUT, "windows": {"0": [1, 2]}})


def test_the_manifest_holds_the_test_splits_reference(tiny_model, test_split) -> None:
    manifest = read_manifest(tiny_model)
    reference, status = drift.Reference.from_manifest(manifest)
    assert status == "ok" and reference is not None
    assert reference.images == manifest["test_images"] == 500  # train_small's test images
    offline = drift.Reference.of(observed(load_classifier(tiny_model), test_split.images[:500]))
    assert reference.counts.tolist() == offline.counts.tolist()
    assert manifest["drift_reference"]["signals"]["intensity"]["edges"][:2] == [16.0, 32.0]


def test_a_manifest_without_a_reference_verifies_loads_and_reports_no_reference(tiny_model, tmp_path) -> None:
    old = tmp_path / "old.joblib"
    shutil.copy(tiny_model, old)
    manifest = read_manifest(tiny_model)
    del manifest["drift_reference"]
    manifest_path_for(old).write_text(json.dumps(manifest))
    verify(old)
    classifier = ModelRegistry(tmp_path, old).load(None)
    assert drift.Reference.from_manifest(classifier.manifest) == (None, "no reference")
    changed = dict(read_manifest(tiny_model))
    changed["drift_reference"] = dict(changed["drift_reference"], layout="other")
    assert "not this version's" in drift.Reference.from_manifest(changed)[1]
    switch = ModelSwitch.fixed(classifier)
    assert switch.manifest(classifier.version) is classifier.manifest and switch.manifest("nope") is None


def test_test_split_windows_stay_below_and_inverted_or_one_class_windows_cross(tiny_model, test_split) -> None:
    """The measurement the docs quote, on the tiny model (reference: 500 test images)."""
    classifier = load_classifier(tiny_model)
    reference, _ = drift.Reference.from_manifest(classifier.manifest)
    assert reference is not None

    def worst(images: np.ndarray) -> dict[str, float]:
        return drift.window_psi(reference, observed(classifier, images).histogram())

    rng = np.random.default_rng(0)
    for _ in range(5):
        same = worst(test_split.images[rng.choice(len(test_split.images), 1000, replace=False)])
        assert max(same.values()) < drift.PSI_WARN, same
    inverted = worst(255 - test_split.images[:1000])
    assert inverted["intensity"] > drift.PSI_ALERT and inverted["class"] > drift.PSI_ALERT, inverted
    one_class = worst(test_split.images[test_split.labels == 7][:1000])
    assert one_class["class"] > drift.PSI_ALERT, one_class


def batch_of(classifier, images: np.ndarray, stamps: list[float], prefix: str = "i"):
    messages = [
        RawMessage(encode_image(f"{prefix}{n}", img, 0), None, t) for n, (img, t) in enumerate(zip(images, stamps))
    ]
    return classify_batch(classifier, messages)


def test_the_tally_counts_drift_with_the_scores_live_and_shadow(rollout_models, test_split) -> None:
    live = load_classifier(rollout_models.trusted / "m0.joblib")
    shadow = load_classifier(rollout_models.trusted / "m1.joblib")
    images = test_split.images[:40]
    result = batch_of(live, images, [1.0] * 30 + [12.0] * 10)
    shadowed = shadow_predict(shadow, result)
    scores, tally = Scores(), ModelTally()
    kept = list(range(5, 40))  # e.g. the first five were duplicates
    count_batch(scores, tally, result, kept, live.version, shadowed, WINDOW)
    live_windows, shadow_windows = tally.live[live.version].drift, tally.shadow[shadow.version].drift
    assert {s: int(r[:10].sum()) for s, r in live_windows.counts.items()} == {0: 25, 10: 10}
    assert sum(int(r[:10].sum()) for r in live_windows.counts.values()) == scores.images == 35
    shadow_classes, shadow_conf = shadow.predict(images[5:])
    assert (
        sum(r[:10] for r in shadow_windows.counts.values()).tolist()
        == np.bincount(shadow_classes, minlength=10).tolist()
    )
    # the pixel statistics are the same images' for both models
    intensity = drift.SIGNALS[2].span
    assert [r[intensity].tolist() for r in live_windows.counts.values()] == [
        r[intensity].tolist() for r in shadow_windows.counts.values()
    ]
    back = ModelTally.from_dict(json.loads(json.dumps(tally.to_dict())))
    assert back.drift_windows(live.version).counts.keys() == live_windows.counts.keys()
    merged = ModelTally().merge(back).merge(back)
    assert int(merged.drift_windows(live.version).counts[0][:10].sum()) == 50


def test_a_row_from_before_drift_reads_with_no_windows(rollout_models, test_split) -> None:
    live = load_classifier(rollout_models.trusted / "m0.joblib")
    tally = ModelTally()
    count_batch(
        Scores(), tally, batch_of(live, test_split.images[:3], [1.0] * 3), [0, 1, 2], live.version, None, WINDOW
    )
    data = tally.to_dict()
    del data["live"][live.version]["drift"]
    assert ModelTally.from_dict(data).drift_windows(live.version).counts == {}


def test_the_drift_report_per_version_with_and_without_a_reference(rollout_models, test_split) -> None:
    live = load_classifier(rollout_models.trusted / "m0.joblib")
    shadow = load_classifier(rollout_models.trusted / "m1.joblib")
    n = drift.MIN_WINDOW_IMAGES
    images = np.concatenate([test_split.images[:n], 255 - test_split.images[:n], test_split.images[n : n + 10]])
    stamps = [1.0] * n + [11.0] * n + [21.0] * 10
    result = batch_of(live, images, stamps)
    tally = ModelTally()
    count_batch(Scores(), tally, result, list(range(len(images))), live.version, shadow_predict(shadow, result), WINDOW)
    manifests = {live.version: live.manifest}  # the shadow's manifest is missing: no reference
    document = tally.drift_report(live.version, shadow.version, manifests.get, WINDOW)
    assert document["psi_alert"] == drift.PSI_ALERT and document["max_windows"] == drift.MAX_DRIFT_WINDOWS
    mine = document["models"][live.version]
    assert mine["role"] == "live" and mine["reference"] == "ok" and mine["reference_images"] == 500
    first, second, third = mine["windows"]
    assert max(first["psi"].values()) < drift.PSI_WARN and first["drifted"] == []
    assert {"class", "intensity"} <= set(second["drifted"])
    assert third["images"] == 10 and third["psi"] is None  # too few images for a PSI
    assert mine["latest"]["start"] == 10 and mine["latest"]["drifted"] == second["drifted"]
    theirs = document["models"][shadow.version]
    assert theirs["role"] == "shadow" and theirs["reference"] == "no reference" and theirs["latest"] is None
    assert [w["images"] for w in theirs["windows"]] == [n, n, 10]

    metrics.set_drift(document)
    labels = {"signal": "intensity", "model_version": live.version, "role": "live"}
    assert REGISTRY.get_sample_value("fmnist_drift_psi", labels) == second["psi"]["intensity"]
    assert REGISTRY.get_sample_value("fmnist_drift_window_images", {"model_version": live.version, "role": "live"}) == n
    assert REGISTRY.get_sample_value("fmnist_drift_reference", {"model_version": shadow.version, "role": "shadow"}) == 0
    metrics.set_drift(tally.drift_report(None, None, manifests.get, WINDOW))  # both retired: no series
    assert REGISTRY.get_sample_value("fmnist_drift_psi", labels) is None


def test_predictions_carry_no_pixels_into_the_tally_when_none_were_decoded() -> None:
    """A batch without pixels (as the store tests build them) counts scores and no drift."""
    outcome = Prediction("a", 1, 0.9, 1, "v", None)
    tally = ModelTally()
    count_batch(Scores(), tally, BatchResult([RawMessage(b"x", None, 1.0)], [outcome], [None]), [0], "v", None, WINDOW)
    assert tally.live["v"].scores.images == 1 and tally.live["v"].drift.counts == {}


def test_the_pipeline_bins_the_pixels_it_predicts_on_once_aligned_with_the_outcomes(tiny_model, test_split) -> None:

    classifier = load_classifier(tiny_model)
    images = test_split.images[:5]
    messages = [
        RawMessage(encode_image("a", images[0], 1)),
        RawMessage(b"not json"),
        RawMessage(encode_batch(["b", "c", "d"], images[1:4], [1, 2, 3])),
        RawMessage(encode_image("e", images[4], 4)),
    ]
    result = classify_isolating(classifier, messages)
    expected = np.column_stack(drift.pixel_bins(images))
    assert [o.id if isinstance(o, Prediction) else None for o in result.outcomes] == ["a", None, "b", "c", "d", "e"]
    assert result.pixel_bins.tolist() == [*expected[:1].tolist(), [-1, -1], *expected[1:].tolist()]
    assert result.take([5, 0]).pixel_bins.tolist() == [expected[4].tolist(), expected[0].tolist()]
    assert result.without({1, 2}).pixel_bins.tolist() == [expected[0].tolist(), *expected[2:].tolist()]


def test_a_record_keeps_drift_for_at_most_max_drift_versions(rollout_models, test_split) -> None:
    """However many versions were promoted: the batch's live and shadow, then the most recent."""
    classifier = load_classifier(rollout_models.trusted / "m0.joblib")
    tally, scores = ModelTally(), Scores()
    versions = [f"v{n}" for n in range(drift.MAX_DRIFT_VERSIONS + 3)]
    for n, version in enumerate(versions):  # one promotion per window
        result = batch_of(classifier, test_split.images[n : n + 2], [n * WINDOW + 1.0] * 2, prefix=version)
        count_batch(scores, tally, result, [0, 1], version, None, WINDOW)
    kept = [v for v in versions if tally.live[v].drift.counts]
    assert kept == versions[-drift.MAX_DRIFT_VERSIONS :]
    assert all(tally.live[v].scores.images == 2 for v in versions)  # scores are never dropped
    # an old version counting again (a worker still on it) keeps its windows; the oldest other goes
    result = batch_of(classifier, test_split.images[:2], [1.0, 1.0])
    count_batch(scores, tally, result, [0, 1], versions[0], None, WINDOW)
    assert [v for v in versions if tally.live[v].drift.counts] == [
        versions[0],
        *versions[-drift.MAX_DRIFT_VERSIONS + 1 :],
    ]
