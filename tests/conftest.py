"""Shared fixtures: real services from the environment, a tiny model, Faust workers.

Integration tests need ``KAFKA_BOOTSTRAP_SERVERS`` / ``PUBSUB_EMULATOR_HOST`` (set by
``make test``). Under ``CI=true`` a missing service fails the test; elsewhere it skips
with the reason.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from fmnist_faust.core import dataset, model

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_env(name: str, what: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        message = f"{what} not available: {name} is not set (run the suite with `make test`)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return value


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    servers = require_env("KAFKA_BOOTSTRAP_SERVERS", "Kafka")
    host, _, port = servers.split(",")[0].rpartition(":")
    if not wait_for_port(host, int(port), 5):
        message = f"Kafka at {servers} does not answer"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return servers


@pytest.fixture(scope="session")
def pubsub_emulator() -> str:
    host = require_env("PUBSUB_EMULATOR_HOST", "the Pub/Sub emulator")
    name, _, port = host.rpartition(":")
    if not wait_for_port(name, int(port), 5):
        message = f"Pub/Sub emulator at {host} does not answer"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return host


@pytest.fixture(scope="session")
def test_split() -> dataset.Split:
    return dataset.load_split("test")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MLP trained on 3,000 images in a second or two, with its manifest."""
    train = dataset.load_split("train")
    test = dataset.load_split("test")
    path = tmp_path_factory.mktemp("model") / "tiny.joblib"
    model.train(train.images[:3000], train.labels[:3000], test.images[:500], test.labels[:500],
                path, hidden=(32,), max_iter=10, log=lambda _msg: None)
    return path


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Worker:
    """A ``faust -A fmnist_faust worker`` subprocess with its own topics, port and data dir."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.port = int(env["FMNIST_WEB_PORT"])
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 60.0) -> "Worker":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "fmnist_faust", "worker", "-l", "info"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        import requests

        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}; log: {self.log_path}")
            try:
                if requests.get(self.url + "/accuracy/", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready in {ready_timeout} s; log: {self.log_path}")

    def accuracy(self) -> dict:
        import requests

        return requests.get(self.url + "/accuracy/", timeout=5).json()

    def stop(self, sig: int = 15, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


@pytest.fixture
def worker_env(kafka_bootstrap: str, tiny_model: Path, tmp_path: Path) -> dict[str, str]:
    """Environment for an isolated worker: unique app id and topic names."""
    tag = uuid.uuid4().hex[:8]
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        FMNIST_APP_ID=f"fmnist-test-{tag}",
        FMNIST_IMAGES_TOPIC=f"images-{tag}",
        FMNIST_PREDICTIONS_TOPIC=f"predictions-{tag}",
        FMNIST_DLQ_TOPIC=f"images-dlq-{tag}",
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
        if len(workers) and "FMNIST_WEB_PORT" not in overrides:
            env["FMNIST_WEB_PORT"] = str(free_port())
            env["FMNIST_WORKER_DATADIR"] = str(tmp_path / f"worker{len(workers)}")
        worker = Worker(env, tmp_path / f"worker{len(workers)}.log").start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
