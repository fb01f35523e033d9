"""Shared fixtures: real services from the environment, a tiny model, Faust workers.

Integration tests need ``KAFKA_BOOTSTRAP_SERVERS`` / ``PUBSUB_EMULATOR_HOST`` (set by
``make test``). Under ``CI=true`` a missing service fails the test; elsewhere it skips
with the reason. Helpers live in ``support.py``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fmnist_faust.config import load_settings, run_names
from fmnist_faust.core import dataset, model
from support import Worker, free_port, require_service

DATA_DIR = load_settings().model.data_dir  # FMNIST_DATA_DIR, as the commands read it


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return require_service("KAFKA_BOOTSTRAP_SERVERS", "Kafka")


@pytest.fixture(scope="session")
def pubsub_emulator() -> str:
    return require_service("PUBSUB_EMULATOR_HOST", "the Pub/Sub emulator")


@pytest.fixture(scope="session")
def test_split() -> dataset.Split:
    return dataset.load_split("test", DATA_DIR)


@pytest.fixture(scope="session")
def train_split() -> dataset.Split:
    return dataset.load_split("train", DATA_DIR)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MLP trained on 3,000 images in a second or two, with its manifest."""
    return model.train_small(tmp_path_factory.mktemp("model") / "tiny.joblib", DATA_DIR)


@dataclass(frozen=True)
class RolloutModels:
    """Three tiny versions: ``trusted`` holds them as trained (the operator's directory, where
    ``fmnist-model`` checks them); ``serving`` is the processes' directory, where the third
    was tampered with after training (its manifest untouched). ``versions[0]`` is the default."""

    trusted: Path
    serving: Path
    versions: tuple[str, str, str]

    def default(self, directory: Path) -> Path:
        return directory / "m0.joblib"


@pytest.fixture(scope="session")
def rollout_models(tmp_path_factory: pytest.TempPathFactory) -> RolloutModels:
    root = tmp_path_factory.mktemp("rollout")
    trusted, serving = root / "trusted", root / "serving"
    trusted.mkdir()
    model.train_small(trusted / "m0.joblib", DATA_DIR)
    model.train_small(trusted / "m1.joblib", DATA_DIR, seed=1, hidden=(24,))
    model.train_small(trusted / "m2.joblib", DATA_DIR, seed=2, hidden=(16,))
    shutil.copytree(trusted, serving)
    with open(serving / "m2.joblib", "ab") as tampered:
        tampered.write(b"\0")
    versions = tuple(model.read_manifest(trusted / f"m{i}.joblib")["model_version"] for i in range(3))
    return RolloutModels(trusted, serving, versions)  # type: ignore[arg-type]


@pytest.fixture
def worker_env(kafka_bootstrap: str, tiny_model: Path, tmp_path: Path) -> dict[str, str]:
    """Environment for an isolated worker: unique app id and topic names."""
    tag = uuid.uuid4().hex[:8]
    env = dict(os.environ, **run_names(tag))
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        FMNIST_APP_ID=f"fmnist-test-{tag}",
        FMNIST_WEB_PORT=str(free_port()),
        FMNIST_WORKER_DATADIR=str(tmp_path / "worker"),
        FMNIST_MODEL_PATH=str(tiny_model),
        FMNIST_BATCH_LINGER="0.02",
    )
    return env


@pytest.fixture
def start_worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator:
    """Factory: ``start_worker()`` starts a worker (more than one share the group)."""
    workers: list[Worker] = []

    def start(**overrides: str) -> Worker:
        env = dict(worker_env, **overrides)
        if env.get("FMNIST_PROCESSING_GUARANTEE") == "exactly_once":
            env.pop("FMNIST_LABELS_TOPIC")  # refused there: no delayed labels with exactly_once
        if len(workers) and "FMNIST_WEB_PORT" not in overrides:
            env["FMNIST_WEB_PORT"] = str(free_port())
            env["FMNIST_WORKER_DATADIR"] = str(tmp_path / f"worker{len(workers)}")
        worker = Worker(env, tmp_path / f"worker{len(workers)}.log").start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
