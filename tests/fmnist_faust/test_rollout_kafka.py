"""Live rollout on the real broker (markers ``kafka``, ``chaos``).

One worker, three tiny versions (``rollout_models``): images stream; ``fmnist-model shadow``
a second version; the worker is SIGKILLed and restarted mid-stream (it comes back with the
shadow); ``promote`` it mid-stream (same process, no restart); ``promote`` a third whose file
in the worker's directory was tampered with (refused with one log line, the second keeps
serving); more images. Then: every image counted once, each under the version whose
prediction was the last one published for it, and ``by_model``'s live parts sum to the totals.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import pytest

from fmnist_faust.core.contract import decode_prediction
from fmnist_faust.core.model import load_classifier
from support import consume_topic, model_cli, print_figures, produce_images, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]
COUNT = 3000
PARTS = ("images", "labeled", "correct", "rejected")


def served(worker) -> dict:
    return worker.get("/stats/").json()["models"]


def assert_by_model_sums(report: dict) -> None:
    """The live parts of ``by_model`` add up to the totals, to the image and to the cell."""
    live = [part["live"] for part in report["by_model"].values() if part["live"]]
    for key in PARTS:
        assert sum(part[key] for part in live) == report[key], key
    assert np.sum([part["confusion"] for part in live], axis=0).tolist() == report["confusion"]


def test_shadow_sigkill_promote_and_a_tampered_candidate(
    start_worker: Callable, worker_env: dict[str, str], kafka_bootstrap: str, test_split, rollout_models
) -> None:
    models = rollout_models
    v0, v1, v2 = models.versions
    env = dict(worker_env, FMNIST_SESSION_TIMEOUT="8")  # the restarted worker rejoins within seconds
    serving = {"FMNIST_MODEL_DIR": str(models.serving), "FMNIST_MODEL_PATH": str(models.default(models.serving))}
    topic = env["FMNIST_IMAGES_TOPIC"]
    images, labels = test_split.images[:COUNT], test_split.labels[:COUNT]

    def send(first: int, last: int) -> None:
        produce_images(kafka_bootstrap, topic, images[first:last], labels[first:last], first_index=first)

    def operator(*args: str) -> str:
        done = model_cli(env, *args, directory=models.trusted)
        assert done.returncode == 0, done.stderr
        return done.stdout

    worker = start_worker(FMNIST_SESSION_TIMEOUT="8", **serving)
    port = str(worker.port)
    send(0, 800)
    wait_until(lambda: worker.accuracy()["images"] >= 800, 60, what="the first 800 images under v0")
    operator("shadow", v1)
    wait_until(lambda: served(worker)["shadow"] == v1, 30, what="the worker shadowing v1")

    def paced(first: int, last: int) -> None:
        for start in range(first, last, 100):
            send(start, start + 100)
            time.sleep(0.7)

    background = threading.Thread(target=paced, args=(800, 1400), daemon=True)
    background.start()
    wait_until(lambda: worker.accuracy()["images"] >= 1100, 60, what="1100 images")
    killed_at = worker.accuracy()["images"]
    worker.stop(signal.SIGKILL)
    worker = start_worker(FMNIST_SESSION_TIMEOUT="8", FMNIST_WEB_PORT=port, **serving)
    assert served(worker) | {"refused": {}} == {
        "live": v0,
        "shadow": v1,
        "pointer": {"live": None, "shadow": v1},
        "refused": {},
    }  # a restarted worker comes back on the pointer's models before its first batch
    background.join(60)
    wait_until(lambda: worker.accuracy()["images"] >= 1400, 60, what="the restarted worker caught up")
    background = threading.Thread(target=paced, args=(1400, 2600), daemon=True)  # ~15 s of images
    background.start()
    wait_until(lambda: worker.accuracy()["images"] >= 1500, 60, what="1500 images after the restart")
    pid = worker.proc.pid
    operator("promote", v1)
    wait_until(lambda: served(worker)["live"] == v1, 30, what="v1 live")
    promoted_at = worker.accuracy()["images"]
    assert background.is_alive() and promoted_at < 2600  # promoted mid-stream
    background.join(60)
    assert not background.is_alive()
    wait_until(lambda: worker.accuracy()["images"] >= 2600, 60, what="2600 images")

    assert model_cli(env, "promote", v2, directory=models.serving).returncode == 2  # the CLI checks its own copy
    operator("promote", v2)  # the operator's copy is good: the pointer names v2 with the true hash
    refused = wait_until(lambda: served(worker)["refused"].get(v2), 30, what="the worker refusing v2")
    assert "refusing to unpickle a file that was changed" in refused
    send(2600, COUNT)
    report = wait_until(
        lambda: (r := worker.accuracy())["images"] >= COUNT and r, 60, what=f"all {COUNT} images counted"
    )
    assert worker.proc.pid == pid and worker.proc.poll() is None  # switched and refused in the same process
    assert served(worker)["live"] == v1
    assert worker.log().count(f"refusing live model {v2}") == 1
    status = model_cli(env | {"FMNIST_WEB_PORT": port}, "status", directory=models.trusted)
    assert status.returncode == 0, status.stderr
    assert f"live:   {v2}" in status.stdout and f"serving (http://127.0.0.1:{port}): live {v1}" in status.stdout
    assert f"refused {v2}:" in status.stdout

    print_figures("kafka", report, killed_at, promoted_at)
    assert report["images"] == report["labeled"] == COUNT
    assert_by_model_sums(report)
    by_model = report["by_model"]
    assert set(by_model) == {v0, v1}  # v2 was refused: it never classified an image
    assert by_model[v0]["role"] == "retired" and by_model[v1]["role"] == "live"
    assert by_model[v0]["live"]["images"] >= 1500 and by_model[v1]["live"]["images"] >= COUNT - promoted_at
    assert by_model[v1]["live_since"] > by_model[v0]["live_since"]
    shadow = by_model[v1]["shadow"]
    assert shadow["compared"] >= 600 and 0.5 < shadow["agreement"] <= 1.0
    assert shadow["images"] == shadow["compared"]

    # Each image counted once, under the version of the last prediction published for it
    # (a batch re-read after the SIGKILL publishes again, then counts), and that version's
    # prediction is what the model gives offline.
    records = consume_topic(kafka_bootstrap, env["FMNIST_PREDICTIONS_TOPIC"], COUNT, timeout=60)
    last = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        last[record.key.decode()] = decode_prediction(record.value)
    assert len(last) == COUNT
    expected: dict[str, np.ndarray] = defaultdict(lambda: np.zeros((10, 10), dtype=np.int64))
    classifiers = {v: load_classifier(models.trusted / f"m{i}.joblib") for i, v in enumerate((v0, v1))}
    for image_id, prediction in last.items():
        index = int(image_id.rsplit("-", 1)[1])
        offline, _ = classifiers[prediction["model_version"]].predict(images[index : index + 1])
        assert prediction["predicted"] == int(offline[0])
        expected[prediction["model_version"]][int(labels[index]), prediction["predicted"]] += 1
    assert {v: m.tolist() for v, m in expected.items()} == {
        v: part["live"]["confusion"] for v, part in by_model.items() if part["live"]
    }


def test_a_restart_on_a_refused_pointer_keeps_the_last_good_version(
    start_worker: Callable, worker_env: dict[str, str], kafka_bootstrap: str, test_split, rollout_models
) -> None:
    """v1 promoted and served, then v2 promoted but refused (its copy here is tampered): a
    restarted worker comes back on v1, not on the default v0, and counts under v1."""
    models = rollout_models
    _, v1, v2 = models.versions
    serving = {"FMNIST_MODEL_DIR": str(models.serving), "FMNIST_MODEL_PATH": str(models.default(models.serving))}

    def operator(*args: str) -> None:
        done = model_cli(worker_env, *args, directory=models.trusted)
        assert done.returncode == 0, done.stderr

    worker = start_worker(**serving)
    operator("promote", v1)
    wait_until(lambda: served(worker)["live"] == v1, 30, what="v1 live")
    operator("promote", v2)
    wait_until(lambda: served(worker)["refused"].get(v2), 30, what="the worker refusing v2")
    assert worker.stop() == 0

    restarted = start_worker(FMNIST_WEB_PORT=str(worker.port), **serving)
    models_served = served(restarted)
    assert models_served["live"] == v1 and models_served["pointer"]["live"] == v2 and v2 in models_served["refused"]
    assert f"serving {v1}, the last good live version before the refused {v2}" in restarted.log()
    produce_images(kafka_bootstrap, worker_env["FMNIST_IMAGES_TOPIC"], test_split.images[:300], test_split.labels[:300])
    report = wait_until(lambda: (r := restarted.accuracy())["images"] >= 300 and r, 60, what="300 images counted")
    assert set(report["by_model"]) == {v1} and report["by_model"][v1]["live"]["images"] == 300
