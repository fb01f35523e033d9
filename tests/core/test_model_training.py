"""Training: the manifest records augmentation, hyperparameters and the epoch loop; the
kept weights are the best validation epoch's; the time budget and the CLI flags hold."""

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
    assert manifest["augmentation"]["kind"] == augment.DEFAULT_AUGMENTATION


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
