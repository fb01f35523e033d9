"""Helpers for the bridge tests: the bridge as a subprocess, a subscription reader,
publishing labelled images and scoring them offline. (A module of its own, not the
conftest, so test modules can import it by a name no other test directory uses.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fmnist_faust.client import MainManager, Message
from fmnist_faust.config import Settings
from fmnist_faust.core import dataset
from fmnist_faust.core.contract import encode_image
from fmnist_faust.core.model import load_classifier
from fmnist_faust.core.rollout import totals_report
from fmnist_faust.core.scores import Scores
from support import Service


class Bridge(Service):
    """``python -m pubsub_bridge run`` as a subprocess, with helpers for its web views."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__([sys.executable, "-m", "pubsub_bridge", "run"], env, log_path, int(env["BRIDGE_WEB_PORT"]))

    def wait_for(self, done: Callable[[Bridge], bool], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"bridge exited with {self.proc.returncode} waiting for {what}:\n{self.log()}")
            if done(self):
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; /accuracy/: {self.accuracy()}\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"bridge did not stop within {timeout} s after {sig}:\n{self.log()}") from None
        return self.proc.returncode


class Collector:
    """Everything arriving on one subscription, through the project's MainManager client."""

    def __init__(self, settings: Settings, subscription: str) -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self._consumer = MainManager("pubsub", settings).create_consumer("unused", self._add, subscription)

    def _add(self, message: Message) -> None:
        with self._lock:
            self.messages.append(message)

    def __len__(self) -> int:
        with self._lock:
            return len(self.messages)

    def wait(self, count: int, timeout: float = 60.0, quiet: float = 1.5) -> list[Message]:
        """Wait for ``count`` messages, then ``quiet`` seconds more to catch any extra."""
        deadline = time.monotonic() + timeout
        while len(self) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(quiet)
        with self._lock:
            return list(self.messages)

    def stop(self) -> None:
        self._consumer.stop()


def publish_images(
    settings: Settings,
    split: dataset.Split,
    indices: range | list[int],
    prefix: str = "img",
    extra: list[tuple[bytes, dict[str, str]]] | None = None,
    chunk: int = 0,
    pause: float = 0.0,
) -> list[str]:
    """Publish labelled images (key attribute = id) plus ``extra`` raw messages; returns the ids.

    With ``chunk``, waits for each ``chunk`` images to be published, then ``pause`` seconds.
    """
    producer = MainManager("pubsub", settings).create_producer(settings.topics.images)
    ids = []
    try:
        for n, i in enumerate(indices, 1):
            image_id = f"{prefix}-{i:05d}"
            ids.append(image_id)
            producer.produce(encode_image(image_id, split.images[i], int(split.labels[i])), key=image_id)
            if chunk and n % chunk == 0:
                producer.flush()
                time.sleep(pause)
        for data, attributes in extra or []:
            producer.produce(data, attributes=attributes)
        producer.flush()
    finally:
        producer.close()
    return ids


def checked_totals(report: dict) -> dict:
    """``report`` (an ``/accuracy/`` document) without ``by_model``, after checking that
    ``by_model``'s live parts sum to its totals: comparable with ``Scores.report``."""
    live = [part["live"] for part in report["by_model"].values() if part["live"]]
    for key in ("images", "labeled", "correct", "rejected"):
        assert sum(part[key] for part in live) == report[key], key
    assert np.sum([part["confusion"] for part in live] or [np.zeros((10, 10))], axis=0).tolist() == report["confusion"]
    return totals_report(report)


def offline_scores(
    model_path: Path, split: dataset.Split, indices: range | list[int], window_seconds: int
) -> tuple[Scores, dict[int, int], str]:
    """The same model on the same images, outside any stream: (scores, index -> predicted, version)."""
    classifier = load_classifier(model_path)
    rows = np.asarray(list(indices))
    predicted, _ = classifier.predict(split.images[rows])
    scores = Scores()
    scores.record(split.labels[rows].tolist(), predicted.tolist(), [0.0] * len(rows), window_seconds)
    return scores, dict(zip(rows.tolist(), predicted.tolist())), classifier.version
