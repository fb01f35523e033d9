"""The model registry, the pointer, the model switch, shadow predictions and per-model tallies."""

from __future__ import annotations

import logging
import shutil

import joblib
import numpy as np
import pytest

from fmnist_faust.core.contract import InvalidMessage, Prediction, encode_image
from fmnist_faust.core.model import ModelError, load_classifier, sha256_file
from fmnist_faust.core.pipeline import BatchResult, RawMessage, classify_batch
from fmnist_faust.core.registry import ModelPointer, ModelRegistry, RolloutState
from fmnist_faust.core.rollout import ModelSwitch, ModelTally, count_batch, shadow_predict
from fmnist_faust.core.scores import Scores


@pytest.fixture
def registry(rollout_models) -> ModelRegistry:
    return ModelRegistry(rollout_models.trusted, rollout_models.default(rollout_models.trusted))


def test_list_reads_manifests_only(rollout_models, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    for path in rollout_models.trusted.iterdir():
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "notes.json").write_text('{"not": "a manifest"}')
    monkeypatch.setattr(joblib, "load", lambda *a, **k: pytest.fail("listing unpickled a model"))
    entries = ModelRegistry(tmp_path, tmp_path / "m0.joblib").entries()
    assert sorted(e.version for e in entries) == sorted(rollout_models.versions)
    assert all(e.sha256 == sha256_file(e.path) for e in entries)


def test_find_and_load_a_version_by_its_pointer(registry: ModelRegistry, rollout_models) -> None:
    v1 = rollout_models.versions[1]
    pointer = registry.verified_pointer(v1)
    assert pointer == ModelPointer(v1, sha256_file(rollout_models.trusted / "m1.joblib"))
    assert registry.load(pointer).version == v1
    assert registry.load(None).version == rollout_models.versions[0]  # no pointer: the default
    with pytest.raises(ModelError, match="unknown model version 'nope'"):
        registry.find("nope")


def test_a_tampered_file_or_a_pointer_with_another_hash_is_refused(rollout_models) -> None:
    serving = ModelRegistry(rollout_models.serving, rollout_models.default(rollout_models.serving))
    trusted = ModelRegistry(rollout_models.trusted, rollout_models.default(rollout_models.trusted))
    v1, v2 = rollout_models.versions[1:]
    with pytest.raises(ModelError, match="does not match its manifest"):
        serving.verified_pointer(v2)  # the CLI's check on a tampered copy
    with pytest.raises(ModelError, match="refusing to unpickle a file that was changed"):
        serving.load(trusted.verified_pointer(v2))  # the worker's check against the pointer
    with pytest.raises(ModelError, match="differs from the pointer"):
        serving.load(ModelPointer(v1, "0" * 64))


def test_the_white_image_fault_reaches_every_model_the_registry_loads(rollout_models) -> None:
    """FMNIST_FAULT_WHITE_IMAGES (config.FaultSettings) as the worker and the bridge hand it
    over: the default and a promoted version both fail on an all-white image, and only there."""
    default = rollout_models.default(rollout_models.trusted)
    faulty = ModelRegistry(rollout_models.trusted, default, fail_on_white_images=True)
    plain = ModelRegistry(rollout_models.trusted, default)
    images = np.zeros((3, 784), dtype=np.uint8)
    images[1] = 255
    for classifier in (faulty.load(None), faulty.load(faulty.verified_pointer(rollout_models.versions[1]))):
        assert len(classifier.predict(images[::2])[0]) == 2
        with pytest.raises(RuntimeError, match="FMNIST_FAULT_WHITE_IMAGES"):
            classifier.predict(images)
    assert len(plain.load(None).predict(images)[0]) == 3


def test_rollout_state_round_trips_and_promotion_clears_the_same_shadow() -> None:
    a, b = ModelPointer("a", "1" * 64), ModelPointer("b", "2" * 64)
    state = RolloutState().shadowed(b)
    assert RolloutState.from_json(state.to_json()) == state
    assert RolloutState.from_json(None) == RolloutState()
    promoted = state.promoted(b)
    assert (promoted.live, promoted.shadow) == (b, None)
    assert (state.promoted(a).live, state.promoted(a).shadow) == (a, b)
    with pytest.raises(ValueError):
        RolloutState.from_json('{"live": {"version": "a", "sha256": "short"}}')


def test_the_switch_loads_what_the_pointer_names_and_keeps_serving_when_refused(
    rollout_models, caplog: pytest.LogCaptureFixture
) -> None:
    v0, v1, v2 = rollout_models.versions
    serving = ModelRegistry(rollout_models.serving, rollout_models.default(rollout_models.serving))
    trusted = ModelRegistry(rollout_models.trusted, rollout_models.default(rollout_models.trusted))
    switch = ModelSwitch.start(serving, RolloutState().shadowed(trusted.verified_pointer(v1)))
    assert (switch.current().live.version, switch.current().shadow.version) == (v0, v1)  # type: ignore[union-attr]
    state = RolloutState().shadowed(trusted.verified_pointer(v1)).promoted(trusted.verified_pointer(v1))
    assert switch.apply(state)
    assert (switch.current().live.version, switch.current().shadow) == (v1, None)
    refused = state.promoted(trusted.verified_pointer(v2))
    with caplog.at_level(logging.ERROR):
        assert not switch.apply(refused)
        assert not switch.apply(refused)  # read again between batches: no second load, no second line
    assert switch.current().live.version == v1
    assert len(caplog.records) == 1 and f"refusing live model {v2}" in caplog.records[0].message
    assert v2 in switch.status()["refused"] and switch.status()["pointer"]["live"] == v2


def test_promotion_remembers_the_versions_live_before() -> None:
    a, b, c = (ModelPointer(name, str(n) * 64) for n, name in enumerate("abc", 1))
    state = RolloutState().promoted(a).promoted(b).shadowed(c).promoted(c).promoted(a)
    assert state.live == a and state.previous == (c, b)  # newest first, the live one not repeated
    assert RolloutState.from_json(state.to_json()) == state
    assert RolloutState.from_json('{"live": null, "shadow": null, "updated_at": 1.0}').previous == ()  # older states
    many = RolloutState()
    for n in range(10):
        many = many.promoted(ModelPointer(f"v{n}", f"{n}" * 64))
    assert [p.version for p in many.previous] == ["v8", "v7", "v6", "v5", "v4"]  # PREVIOUS_KEPT


def test_a_restart_on_a_refused_pointer_serves_the_last_good_version(
    rollout_models, caplog: pytest.LogCaptureFixture
) -> None:
    v0, v1, v2 = rollout_models.versions
    serving = ModelRegistry(rollout_models.serving, rollout_models.default(rollout_models.serving))
    trusted = ModelRegistry(rollout_models.trusted, rollout_models.default(rollout_models.trusted))
    state = RolloutState().promoted(trusted.verified_pointer(v1)).promoted(trusted.verified_pointer(v2))
    with caplog.at_level(logging.WARNING):
        switch = ModelSwitch.start(serving, state)  # v2's copy here is tampered
    assert switch.current().live.version == v1
    assert v2 in switch.status()["refused"] and switch.status()["pointer"]["live"] == v2
    assert f"serving {v1}, the last good live version before the refused {v2}" in caplog.text
    assert not switch.apply(state)  # read again: nothing changes, nothing logged twice


def test_a_restart_on_a_refused_pointer_with_nothing_before_serves_the_default(rollout_models) -> None:
    serving = ModelRegistry(rollout_models.serving, rollout_models.default(rollout_models.serving))
    trusted = ModelRegistry(rollout_models.trusted, rollout_models.default(rollout_models.trusted))
    switch = ModelSwitch.start(serving, RolloutState().promoted(trusted.verified_pointer(rollout_models.versions[2])))
    assert switch.current().live.version == rollout_models.versions[0]
    assert rollout_models.versions[2] in switch.status()["refused"]


def _batch(test_split, count: int, bad: int = 1) -> list[RawMessage]:
    messages = [
        RawMessage(encode_image(f"i{n}", test_split.images[n], int(test_split.labels[n])), timestamp=100.0 + n)
        for n in range(count)
    ]
    return messages + [RawMessage(b"{not json", timestamp=200.0) for _ in range(bad)]


def test_shadow_scores_and_agreement_beside_live_parts_that_sum_to_the_totals(rollout_models, test_split) -> None:
    v0, v1, _ = rollout_models.versions
    live = load_classifier(rollout_models.trusted / "m0.joblib")
    shadow = load_classifier(rollout_models.trusted / "m1.joblib")
    result = classify_batch(live, _batch(test_split, 200))
    shadowed = shadow_predict(shadow, result)
    assert shadowed is not None and shadowed.predicted[-1] is None  # the invalid message
    scores, tally = Scores(), ModelTally()
    keep = [i for i in range(len(result.outcomes)) if i % 3 != 0]  # a caller's selection, e.g. not duplicates
    count_batch(scores, tally, result, keep, v0, shadowed, 10)
    later = classify_batch(shadow, _batch(test_split, 50, bad=0))
    count_batch(scores, tally, later, range(len(later.outcomes)), v1, None, 10)

    report = tally.report(v1, None)
    assert report[v0]["role"] == "retired" and report[v1]["role"] == "live"
    parts = [report[v]["live"] for v in (v0, v1)]
    totals = scores.report(None)
    for key in ("images", "labeled", "correct", "rejected"):
        assert sum(p[key] for p in parts) == totals[key]
    assert np.add(parts[0]["confusion"], parts[1]["confusion"]).tolist() == totals["confusion"]
    assert report[v0]["live_since"] == 101.0 and report[v1]["live_since"] == 100.0

    kept = [i for i in keep if i < 200]  # the valid images among them
    offline, _ = shadow.predict(test_split.images[kept])
    live_guess = [result.outcomes[i].predicted for i in kept]  # type: ignore[union-attr]
    shadow_report = report[v1]["shadow"]
    assert shadow_report["compared"] == len(kept) == shadow_report["images"]
    assert shadow_report["agreed"] == int((offline == np.array(live_guess)).sum())
    assert shadow_report["correct"] == int((offline == test_split.labels[kept]).sum())
    assert shadow_report["rejected"] == 0  # rejections are the live model's part only

    restored = ModelTally.from_dict(tally.to_dict())
    assert restored.report(v1, None) == report
    assert ModelTally().merge(restored).merge(ModelTally()).report(v1, None) == report


def test_a_record_from_before_tallies_is_its_model_versions_part() -> None:
    scores = Scores()
    scores.record([1, 2], [1, 3], [0.0, 0.0], 10)
    scores.reject("not_json")
    tally = ModelTally.of_record(None, scores, "old")
    part = tally.report("new", None)["old"]["live"]
    assert (part["images"], part["correct"], part["rejected"]) == (2, 1, 1)


def test_no_shadow_costs_no_predict_call() -> None:
    outcomes: list = [Prediction("a", 1, 0.9, 1, "m", None), InvalidMessage("not_json", "bad")]
    result = BatchResult([RawMessage(b"x"), RawMessage(b"y")], outcomes, [np.zeros(784, np.uint8), None])
    assert shadow_predict(None, result) is None
