"""Training: the manifest records augmentation, hyperparameters and the epoch loop; the
kept weights are the best validation epoch's; the step size follows its cosine schedule,
which the time budget shortens; the CLI flags hold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fmnist_faust import cli
from fmnist_faust.core import augment, dataset, model


def _train(train_split: dataset.Split, test_split: dataset.Split, out: Path, **options: object) -> dict:
    """A 16-unit MLP on 1,200 images: a second or two even with 5 copies."""
    return model.train(
        train_split.images[:1200],
        train_split.labels[:1200],
        test_split.images[:300],
        test_split.labels[:300],
        out,
        hidden=(16,),
        log=lambda _msg: None,
        **options,  # type: ignore[arg-type]
    )


def test_manifest_records_augmentation_hyperparameters_and_epochs(
    train_split: dataset.Split, test_split: dataset.Split, tmp_path: Path
) -> None:
    manifest = _train(train_split, test_split, tmp_path / "m.joblib", max_iter=4, augmentation="shift1")
    assert manifest == json.loads((tmp_path / "m.json").read_text())
    assert model.verify(tmp_path / "m.joblib") == manifest
    assert manifest["augmentation"] == {
        "kind": "shift1",
        "shifts": [[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]],
        "copies": 5,
        "original_images": 1080,
    }
    assert manifest["train_images"] == 5 * 1080
    hyperparameters = manifest["hyperparameters"]
    assert hyperparameters["hidden_layer_sizes"] == [16]
    assert (hyperparameters["alpha"], hyperparameters["batch_size"], hyperparameters["solver"]) == (1e-3, 256, "adam")
    training = manifest["training"]
    assert training["max_iter"] == 4 and training["seed"] == 0
    assert (training["validation_images"], training["validation_fraction"]) == (120, 0.1)
    assert training["stopped_by"] == "max_iter" and manifest["epochs"] == 4 == len(training["epoch_seconds"])
    assert training["learning_rates"] == [
        pytest.approx(model.cosine_learning_rate(epoch / 3), rel=1e-3) for epoch in range(4)
    ]
    assert 1 <= training["best_epoch"] <= 4
    assert 0 < manifest["train_seconds"] < 60
    assert 0.5 < manifest["test_accuracy"] <= 1 and manifest["test_images"] == 300


def test_kept_weights_are_the_best_validation_epochs(
    train_split: dataset.Split, test_split: dataset.Split, tmp_path: Path
) -> None:
    manifest = _train(train_split, test_split, tmp_path / "m.joblib", max_iter=6, augmentation="none", seed=3)
    held_out, kept = model.validation_split(1200, seed=3)
    assert len(held_out) == 120 and len(np.intersect1d(held_out, kept)) == 0 and len(kept) == 1080
    predicted, _ = model.load_classifier(tmp_path / "m.joblib").predict(train_split.images[held_out])
    accuracy = float((predicted == train_split.labels[held_out]).mean())
    assert accuracy == pytest.approx(manifest["training"]["validation_accuracy"], abs=1e-6)


def test_training_is_reproducible_with_a_seed(
    train_split: dataset.Split, test_split: dataset.Split, tmp_path: Path
) -> None:
    first = _train(train_split, test_split, tmp_path / "a.joblib", max_iter=2, augmentation="shift1", seed=5)
    second = _train(train_split, test_split, tmp_path / "b.joblib", max_iter=2, augmentation="shift1", seed=5)
    assert first["test_accuracy"] == second["test_accuracy"]
    assert first["training"]["validation_accuracy"] == second["training"]["validation_accuracy"]


def test_time_budget_stops_before_the_next_epoch(
    train_split: dataset.Split, test_split: dataset.Split, tmp_path: Path
) -> None:
    manifest = _train(train_split, test_split, tmp_path / "m.joblib", max_iter=50, time_budget=0.0)
    assert manifest["epochs"] == 1 and manifest["training"]["stopped_by"] == "time_budget"
    assert manifest["training"]["learning_rates"] == [model.LEARNING_RATE_START]
    assert manifest["augmentation"]["kind"] == augment.DEFAULT_AUGMENTATION


def test_cosine_schedule_falls_from_the_start_rate_to_its_end_fraction() -> None:
    rates = [model.cosine_learning_rate(step / 10) for step in range(11)]
    assert rates[0] == pytest.approx(model.LEARNING_RATE_START)
    assert rates[-1] == pytest.approx(model.LEARNING_RATE_START * model.LEARNING_RATE_END_FRACTION)
    assert all(later < earlier for earlier, later in zip(rates, rates[1:]))
    assert model.cosine_learning_rate(0.5) == pytest.approx(np.mean([rates[0], rates[-1]]))
    assert model.cosine_learning_rate(1.5) == rates[-1] and model.cosine_learning_rate(-1) == rates[0]


def test_planned_epochs_shrink_to_what_the_budget_holds_at_the_last_pace() -> None:
    assert model.planned_epochs(20, [], elapsed=0.0, time_budget=100.0) == 20
    assert model.planned_epochs(20, [2.0], elapsed=2.0, time_budget=100.0) == 20  # 49 more would fit
    assert model.planned_epochs(20, [10.0, 10.0], elapsed=20.0, time_budget=100.0) == 10  # 8 more fit
    assert model.planned_epochs(20, [10.0, 30.0], elapsed=40.0, time_budget=100.0) == 4  # the last pace counts
    assert model.planned_epochs(20, [10.0, 10.0, 10.0], elapsed=30.0, time_budget=5.0) == 3  # never below done


def test_set_learning_rate_reaches_the_optimizer_between_partial_fits(train_split: dataset.Split) -> None:
    """With the step size set to 0 after the first call, a further call leaves the weights
    as they are: the rate got to the optimizer scikit-learn built at that first call."""
    images = train_split.images[:512].astype(np.float32) / 255
    labels = train_split.labels[:512]
    mlp = model.build_mlp((8,), seed=0)
    model.set_learning_rate(mlp, 1e-2)
    assert mlp.learning_rate_init == 1e-2  # before the first call: the parameter it builds from
    mlp.partial_fit(images, labels, classes=np.arange(10))
    before = [c.copy() for c in mlp.coefs_]
    model.set_learning_rate(mlp, 0.0)
    mlp.partial_fit(images, labels)
    for was, now in zip(before, mlp.coefs_):
        np.testing.assert_array_equal(was, now)
    model.set_learning_rate(mlp, 1e-2)
    mlp.partial_fit(images, labels)
    assert not np.array_equal(before[0], mlp.coefs_[0])


def test_fmnist_train_flags_choose_augmentation_seed_and_budget(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli.joblib"
    argv = ["--out", str(out), "--subset", "1000", "--hidden", "8", "--max-iter", "2", "--quiet"]
    assert cli.train_main([*argv, "--augment", "none", "--seed", "7", "--time-budget", "30"]) == 0
    manifest = model.read_manifest(out)
    assert manifest["augmentation"]["kind"] == "none" and manifest["train_images"] == 900
    assert (manifest["training"]["seed"], manifest["training"]["time_budget_seconds"]) == (7, 30.0)
    assert cli.train_main([*argv, "--force"]) == 0
    manifest = model.read_manifest(out)
    assert manifest["augmentation"]["kind"] == "shift1" and manifest["train_images"] == 4500
    assert "saved" in capsys.readouterr().out
