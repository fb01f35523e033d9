"""The Faust worker end to end on the real Kafka broker (no mocks).

2,000 labelled images in; exactly 2,000 predictions out, one per id; /accuracy/ equal
to the offline score of the same model; tables survive a restart; kcat interop.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fmnist_faust.core.contract import CLASS_NAMES, decode_prediction
from fmnist_faust.core.model import load_classifier
from support import IN_CI, consume_topic, produce_images, wait_until

pytestmark = pytest.mark.kafka
COUNT = 2000


def offline_confusion(model_path: Path, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    predicted, _ = load_classifier(model_path).predict(images)
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (labels.astype(int), predicted), 1)
    return confusion


def test_stream_2000_images_exactly_once_and_restart(
    start_worker, worker_env, kafka_bootstrap, test_split, tiny_model
) -> None:
    images, labels = test_split.images[:COUNT], test_split.labels[:COUNT]
    worker = start_worker()
    ids = produce_images(kafka_bootstrap, worker_env["FMNIST_IMAGES_TOPIC"], images, labels)

    report = wait_until(
        lambda: (r := worker.accuracy())["images"] >= COUNT and r, timeout=120, what=f"{COUNT} images counted"
    )
    expected = offline_confusion(tiny_model, images, labels)
    assert report["images"] == COUNT and report["labeled"] == COUNT
    assert report["correct"] == int(np.trace(expected))
    assert report["accuracy"] == pytest.approx(np.trace(expected) / COUNT)
    assert report["confusion"] == expected.tolist()
    assert report["rejected"] == 0
    assert report["per_class"]["Trouser"]["support"] == int((labels == 1).sum())
    assert report["model_version"] == load_classifier(tiny_model).version

    records = consume_topic(kafka_bootstrap, worker_env["FMNIST_PREDICTIONS_TOPIC"], COUNT)
    predictions = [decode_prediction(r.value) for r in records]
    assert len(predictions) == COUNT
    assert sorted(p["id"] for p in predictions) == sorted(ids)
    assert all(r.key.decode() == decode_prediction(r.value)["id"] for r in records)
    sample = predictions[0]
    assert set(sample) == {
        "id",
        "predicted",
        "class_name",
        "confidence",
        "label",
        "correct",
        "model_version",
        "latency_ms",
    }
    assert sample["class_name"] == CLASS_NAMES[sample["predicted"]]
    assert sum(p["correct"] for p in predictions) == report["correct"]

    window = worker_window(worker)
    assert sum(w["images"] for w in window["windows"]) == COUNT

    # Restart: the changelog brings the same numbers back.
    assert worker.stop() == 0
    restarted = start_worker(FMNIST_WEB_PORT=str(worker.port))
    again = wait_until(
        lambda: (r := restarted.accuracy())["images"] >= COUNT and r, timeout=60, what="tables recovered after restart"
    )
    assert again == report


def worker_window(worker) -> dict:
    import requests

    return requests.get(worker.url + "/accuracy/window/", timeout=5).json()


def test_kcat_interop(start_worker, worker_env, kafka_bootstrap, test_split, tmp_path) -> None:
    """Produce with kcat (librdkafka, not our code) in the documented contract, both forms."""
    kcat = shutil.which("kcat")
    if kcat is None:
        if IN_CI:
            pytest.fail("kcat is not installed (tools/install.sh installs it)")
        pytest.skip("kcat is not installed")
    worker = start_worker()
    topic = worker_env["FMNIST_IMAGES_TOPIC"]
    lines = []
    for i in range(20):
        image_id = f"kcat-{i}"
        pixels = base64.b64encode(test_split.images[i].tobytes()).decode()
        if i % 2:  # the list-of-ints form is accepted too
            value = {"id": image_id, "pixels": test_split.images[i].tolist(), "label": int(test_split.labels[i])}
        else:
            value = {"id": image_id, "pixels": pixels, "label": int(test_split.labels[i]), "extra": "ignored"}
        lines.append(f"{image_id}\t{json.dumps(value)}")
    # and one batch record of 5 images (ids kcat-20..24), keyed by a gateway name, as in docs/wire-contract.md
    batch = {
        "ids": [f"kcat-{i}" for i in range(20, 25)],
        "labels": [int(label) for label in test_split.labels[20:25]],
        "pixels": base64.b64encode(test_split.images[20:25].tobytes()).decode(),
    }
    lines.append(f"gateway-1\t{json.dumps(batch)}")
    data = tmp_path / "images.txt"
    data.write_text("\n".join(lines) + "\n")
    # murmur2 = the Java/aiokafka partitioner, so a key lands where our producer puts it.
    subprocess.run(
        [
            kcat,
            "-b",
            kafka_bootstrap,
            "-P",
            "-t",
            topic,
            "-K",
            "\t",
            "-X",
            "topic.partitioner=murmur2_random",
            "-l",
            str(data),
        ],
        check=True,
        timeout=30,
    )
    wait_until(lambda: worker.accuracy()["images"] >= 25, timeout=60, what="kcat images counted")
    out = subprocess.run(
        [
            kcat,
            "-b",
            kafka_bootstrap,
            "-C",
            "-t",
            worker_env["FMNIST_PREDICTIONS_TOPIC"],
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%k\t%s\n",
        ],
        check=True,
        timeout=30,
        capture_output=True,
        text=True,
    ).stdout
    got = {}
    for line in out.strip().splitlines():
        key, value = line.split("\t", 1)
        got[key] = json.loads(value)
    assert set(got) == {f"kcat-{i}" for i in range(25)}
    offline, _ = load_classifier(Path(worker_env["FMNIST_MODEL_PATH"])).predict(test_split.images[:25])
    assert [got[f"kcat-{i}"]["predicted"] for i in range(25)] == offline.tolist()
