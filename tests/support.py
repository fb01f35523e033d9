"""Helpers shared by the tests: real-service checks, worker processes, Kafka I/O."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

from fmnist_faust.netutil import NotReady, free_port, wait_ready

__all__ = ["free_port"]  # shared by the tests from here, defined once in the product

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


def require_service(name: str, what: str) -> str:
    """The ``host:port`` in env var ``name``, once it answers (fail in CI, else skip)."""
    address = require_env(name, what)
    host, _, port = address.split(",")[0].rpartition(":")
    if not wait_for_port(host, int(port), 5):
        message = f"{what} at {address} does not answer"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return address


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


class Service:
    """A product process (``faust ... worker`` or ``python -m pubsub_bridge run``) serving the
    JSON views on ``port``; :meth:`start` returns once ``/accuracy/`` answers."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, port: int) -> None:
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.port = port
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 60.0) -> Service:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_ready(self.proc, self.url + "/accuracy/", self.log_path, ready_timeout)
        except NotReady as exc:
            raise RuntimeError(f"{exc}\n{self.log()}") from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def get(self, path: str) -> requests.Response:
        response = requests.get(self.url + path, timeout=30)
        response.raise_for_status()
        return response

    def accuracy(self) -> dict:
        return self.get("/accuracy/").json()

    def metric(self, name: str) -> float:
        for line in self.get("/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)


class Worker(Service):
    """A ``faust -A fmnist_faust worker`` subprocess with its own topics, port and data dir."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__(
            [sys.executable, "-m", "faust", "-A", "fmnist_faust", "worker", "-l", "info"],
            env,
            log_path,
            int(env["FMNIST_WEB_PORT"]),
        )

    def stop(self, sig: int = 15, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def consume_topics(
    bootstrap: str,
    expected: dict[str, int],
    timeout: float = 60.0,
    settle: float = 1.0,
    fetch_bytes: int = 1 << 20,
    isolation_level: str = "read_uncommitted",
) -> dict[str, list]:
    """Read each topic from the beginning until it has its ``expected`` count (then ``settle``
    seconds more, to catch anything extra) or ``timeout``; returns topic -> ConsumerRecords.
    ``fetch_bytes`` must exceed the largest record (oversize-message tests)."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    async def run() -> dict[str, list]:
        consumer = AIOKafkaConsumer(
            *expected,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_partition_fetch_bytes=fetch_bytes,
            fetch_max_bytes=max(fetch_bytes, 50 << 20),
            isolation_level=isolation_level,
        )
        await consumer.start()
        records: dict[str, list] = {topic: [] for topic in expected}
        loop = asyncio.get_running_loop()
        deadline, settled_at = loop.time() + timeout, None
        try:
            while loop.time() < deadline:
                for tp, batch in (await consumer.getmany(timeout_ms=200)).items():
                    records[tp.topic].extend(batch)
                if all(len(records[t]) >= n for t, n in expected.items()):
                    settled_at = settled_at or loop.time() + settle
                    if loop.time() >= settled_at:
                        break
        finally:
            await consumer.stop()
        return records

    return asyncio.run(run())


def committed_and_ends(
    bootstrap: str, group: str, topic: str, partitions: int = 4
) -> tuple[dict[int, int | None], dict[int, int]]:
    """The group's committed offset and the log end of every partition of ``topic``."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    async def run() -> tuple[dict[int, int | None], dict[int, int]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        await admin.start()
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            ends = await consumer.end_offsets(tps)
            offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
            committed = {
                tp.partition: (meta.offset if meta is not None and meta.offset >= 0 else None)
                for tp, meta in offsets.items()
            }
            return committed, {tp.partition: end for tp, end in ends.items()}
        finally:
            await consumer.stop()
            await admin.close()

    return asyncio.run(run())


def _report(worker) -> dict | None:
    """The worker's ``/accuracy/``; None while a request fails (one did, right after the broker
    resumed); fails at once, with its log, when the worker has exited."""
    try:
        return worker.accuracy()
    except requests.ConnectionError:
        if worker.proc is not None and worker.proc.poll() is not None:
            raise AssertionError(f"the worker exited with status {worker.proc.returncode}:\n{worker.log()}") from None
        return None


def counted(worker) -> int:
    """Images the worker reports; 0 while a request fails."""
    report = _report(worker)
    return 0 if report is None else int(report["images"])


def handled(worker) -> int:
    """Messages the worker reports, counted images plus dead-lettered ones (a message that is
    not an image never counts as one); 0 while a request fails."""
    report = _report(worker)
    return 0 if report is None else int(report["images"]) + int(report["rejected"])


def consume_topic(bootstrap: str, topic: str, expected: int, timeout: float = 60.0, settle: float = 1.0) -> list:
    """:func:`consume_topics` for one topic."""
    return consume_topics(bootstrap, {topic: expected}, timeout, settle)[topic]


def produce_images(
    bootstrap: str, topic: str, images, labels, prefix: str = "img", partitions: int = 4, first_index: int = 0
) -> list[str]:
    """Send labelled images in the contract's JSON form, key = id; returns the ids."""
    from fmnist_faust.client import MainManager
    from fmnist_faust.config import load_settings
    from fmnist_faust.core.contract import encode_image
    from fmnist_faust.kafka_admin import ensure_topics_sync

    settings = load_settings(
        {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "FMNIST_IMAGES_TOPIC": topic, "FMNIST_PARTITIONS": str(partitions)}
    )
    ensure_topics_sync(settings)
    ids = [f"{prefix}-{i}" for i in range(first_index, first_index + len(images))]
    producer = MainManager("kafka", settings).create_producer(topic)
    try:
        producer.produce_many(
            (encode_image(i, img, int(lab), time.time()), i) for i, img, lab in zip(ids, images, labels)
        )
        producer.flush()
    finally:
        producer.close()
    return ids


def broker_pid() -> int:
    """The local broker's pid (started by tools/services.sh), to freeze it; skips otherwise."""
    pid_file = ROOT / ".run" / "kafka" / "pid"
    if not pid_file.exists():
        pytest.skip("the broker was not started by tools/services.sh: cannot freeze it")
    return int(pid_file.read_text())


def freeze(pid: int, seconds: float) -> None:
    """SIGSTOP ``pid`` for ``seconds``, then SIGCONT (always)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def wait_until(condition, timeout: float = 60.0, interval: float = 0.25, what: str = "condition"):
    """Poll ``condition()`` until it returns a truthy value; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def model_cli(env: dict[str, str], *args: str, directory: Path | None = None) -> subprocess.CompletedProcess:
    """``fmnist-model ARGS`` in ``env`` (with ``directory`` as its model directory and its
    m0.joblib as the default), as an operator runs it; returns the finished process."""
    if directory is not None:
        env = dict(env, FMNIST_MODEL_DIR=str(directory), FMNIST_MODEL_PATH=str(directory / "m0.joblib"))
    return subprocess.run(
        [sys.executable, "-m", "fmnist_faust.model_cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def print_figures(backend: str, report: dict, killed_at: int, promoted_at: int) -> None:
    """One line for the record (``pytest -s``): what the run streamed, when it switched, and how it counted."""
    parts = {
        version: {
            "role": part["role"],
            "live_images": part["live"] and part["live"]["images"],
            "live_accuracy": part["live"] and part["live"]["accuracy"],
            "shadow_images": part["shadow"] and part["shadow"]["images"],
            "shadow_accuracy": part["shadow"] and part["shadow"]["accuracy"],
            "agreement": part["shadow"] and part["shadow"]["agreement"],
        }
        for version, part in report["by_model"].items()
    }
    figures = {"images": report["images"], "accuracy": report["accuracy"], "by_model": parts}
    print(f"ROLLOUT {backend}: SIGKILL at {killed_at}, promoted at {promoted_at}:", json.dumps(figures))


def offline_confusion(model_path, images, labels) -> list[list[int]]:
    """The confusion matrix the model gives offline: what exact streamed totals must equal."""

    from fmnist_faust.core.model import load_classifier

    predicted, _ = load_classifier(model_path).predict(images)
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (labels.astype(int), predicted), 1)
    return confusion.tolist()


class DelayedLabels:
    """The delayed-labels scenario of both backends' tests: ``count`` images sent without
    labels, their labels in shuffled order: a tenth before their images, a tenth never, the
    rest after them, and a twentieth sent twice (the second time wrong, so that counting it
    would show), plus labels for ids that never come and malformed labels."""

    UNKNOWN = 7  # labels for ids no image has
    MALFORMED = (
        (b"{not json", "lab-x", "not_json"),
        (b'{"id": "lab-0", "label": 12}', "lab-0", "bad_label"),
        (b'{"label": 3}', None, "bad_id"),
        (b'{"id": "lab-1"}', "lab-1", "bad_label"),
        (b'{"id": "lab-2", "label": 2}', "someone-else", "key_mismatch"),
    )

    def __init__(self, truth, seed: int = 22) -> None:
        import random

        self.truth = truth  # the true label of each image
        count = self.count = len(truth)
        order = list(range(count))
        random.Random(seed).shuffle(order)
        tenth = max(1, count // 10)
        self.early, self.never, self.late = order[:tenth], order[tenth : 2 * tenth], order[2 * tenth :]
        labelled = self.early + self.late
        self.twice = sorted(random.Random(seed + 1).sample(labelled, max(1, count // 20)))
        self.ids = [self.image_id(i) for i in range(count)]

    @staticmethod
    def image_id(index: int) -> str:
        return f"lab-{index}"

    def labels(self, indices, wrong: bool = False) -> list[tuple[bytes, str]]:
        """(value, key) of the label messages of ``indices`` (``wrong``: another class)."""
        from fmnist_faust.core.contract import encode_label

        return [
            (encode_label(self.image_id(i), (int(self.truth[i]) + int(wrong)) % 10), self.image_id(i)) for i in indices
        ]

    def unknown(self) -> list[tuple[bytes, str]]:
        from fmnist_faust.core.contract import encode_label

        return [(encode_label(f"nobody-{n}", n % 10), f"nobody-{n}") for n in range(self.UNKNOWN)]

    @property
    def joined(self) -> list[int]:
        return sorted(self.early + self.late)

    def check_joined(self, report: dict, model_path, images, labels) -> None:
        """Everything labelled has joined, the tenth never labelled waits: exact, nothing twice."""
        joined = self.joined
        assert report["images"] == self.count
        assert report["labeled"] == len(joined) and report["awaiting_label"] == len(self.never)
        assert report["label_expired"] == 0
        assert report["confusion"] == offline_confusion(model_path, images[joined], labels[joined])
        got = report["labels"]
        assert got["joined"] == len(joined) and got["repeated"] == len(self.twice) and got["late"] == 0
        assert got["awaiting_image"] == self.UNKNOWN and got["expired"] == 0
        assert got["rejected_by_kind"] == dict(sorted(Counter(kind for _, _, kind in self.MALFORMED).items()))

    def check_expired(self, report: dict, model_path, images, labels) -> None:
        """After the wait: the never-labelled images and the unknown ids' labels expired, exactly."""
        joined = self.joined
        assert report["images"] == self.count
        assert report["labeled"] == len(joined) and report["awaiting_label"] == 0
        assert report["label_expired"] == len(self.never)
        assert report["confusion"] == offline_confusion(model_path, images[joined], labels[joined])
        got = report["labels"]
        assert got["awaiting_image"] == 0 and got["expired"] == self.UNKNOWN
        assert got["received"] == len(joined) + len(self.twice) + self.UNKNOWN

    def check_metrics(self, url: str, report: dict) -> None:
        """``/metrics`` exports the label counts of ``report`` under the names both backends share."""
        from prometheus_client.parser import text_string_to_metric_families

        text = requests.get(url + "/metrics", timeout=10).text
        samples = {
            (s.name, s.labels.get("outcome")): s.value for f in text_string_to_metric_families(text) for s in f.samples
        }
        assert samples[("fmnist_awaiting_label", None)] == report["awaiting_label"]
        assert samples[("fmnist_label_expired", None)] == report["label_expired"]
        for outcome in ("joined", "awaiting_image", "expired", "repeated", "late", "rejected"):
            assert samples[("fmnist_labels", outcome)] == report["labels"][outcome], outcome

    def figures(self, report: dict) -> dict:
        """The closing figures of one run, for the record (``pytest -s``)."""
        keys = ("images", "labeled", "correct", "accuracy", "awaiting_label", "label_expired")
        return {key: report[key] for key in keys} | {"labels": report["labels"]}


@dataclass(frozen=True)
class DriftWindow:
    """The images the drift tests send in one window, and what they are."""

    kind: str
    ids: list[str]
    images: np.ndarray
    labels: np.ndarray


def drift_stream(split, one_class: int = 7) -> list[DriftWindow]:
    """Seven windows: the test split twice; half test split, half the same images inverted
    (255 - x); inverted; the test split; half test split, half one class; that class alone."""
    from fmnist_faust.core.contract import CLASS_NAMES

    test, inverted = split.images, 255 - split.images
    of_class = np.flatnonzero(split.labels == one_class)
    parts = [
        [("test", range(0, 1000))],
        [("test", range(1000, 2000))],
        [("test", range(2000, 2500)), ("inverted", range(0, 500))],
        [("inverted", range(500, 1500))],
        [("test", range(2500, 3500))],
        [("test", range(3500, 4000)), ("class", of_class[:500])],
        [("class", of_class[500:1000])],
    ]
    names = {"test": "test", "inverted": "inverted", "class": CLASS_NAMES[one_class].lower()}
    windows = []
    for window in parts:
        ids, images, labels = [], [], []
        for kind, rows in window:
            rows = np.asarray(rows)
            ids += [f"{kind}-{i}" for i in rows]
            images.append(inverted[rows] if kind == "inverted" else test[rows])
            labels.append(split.labels[rows])
        kinds = [names[kind] for kind, _ in window]
        name = " + ".join(f"{k} half" for k in kinds) if len(kinds) > 1 else kinds[0]
        windows.append(DriftWindow(name, ids, np.concatenate(images), np.concatenate(labels)))
    return windows


def offline_drift(classifier, images) -> dict[str, list[int]]:
    """The drift counts per signal of ``images`` classified outside any stream (one window)."""
    from fmnist_faust.core import drift

    predicted, confidence = classifier.predict(images)
    row = drift.Observations.of(predicted, confidence, images, [0.0] * len(images)).histogram()
    return {s.name: row[s.span].tolist() for s in drift.SIGNALS}


def drift_records(windows: list[DriftWindow], base: int, window_seconds: int) -> list[tuple[str, bytes, float]]:
    """``windows`` as batch records of 50 images, stamped one window after another from ``base``."""
    from fmnist_faust.core.contract import encode_batch

    records = []
    for w, window in enumerate(windows):
        for first in range(0, len(window.ids), 50):
            part = slice(first, first + 50)
            value = encode_batch(window.ids[part], window.images[part], window.labels[part].tolist())
            records.append((window.ids[first], value, base + w * window_seconds + 1.0))
    return records


def produce_at(bootstrap: str, topic: str, records: list[tuple[str, bytes, float]]) -> None:
    """Send (key, value, record timestamp) with those timestamps: the windows are the test's."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, max_request_size=4 << 20
        )
        await producer.start()
        try:
            sent = [
                await producer.send(topic, value, key=key.encode(), timestamp_ms=int(stamp * 1000))
                for key, value, stamp in records
            ]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()

    asyncio.run(run())
