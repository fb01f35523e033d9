"""Worker start-up on the real broker: no valid model stops it with a clear message; a healthy
start has its topics and logs no ERROR."""

import subprocess
import sys
import time

import pytest
import requests

from fmnist_faust.config import load_settings
from fmnist_faust.core import model
from support import ROOT, produce_images, wait_until

pytestmark = pytest.mark.kafka


def test_missing_model_stops_the_worker_at_start(worker_env: dict[str, str], tmp_path) -> None:
    env = dict(worker_env, FMNIST_MODEL_PATH=str(tmp_path / "absent.joblib"))
    done = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "fmnist_faust", "worker", "-l", "info"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "cannot load the model" in done.stdout + done.stderr
    assert f"model file missing; {model.TRAIN_HINT}" in done.stdout + done.stderr


def test_output_topics_exist_once_the_worker_answers(start_worker, worker_env: dict[str, str], kafka_bootstrap) -> None:
    """A worker that answers /accuracy/ has created predictions and the DLQ."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    worker = start_worker()
    assert worker.accuracy()["images"] == 0

    async def topics() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    wanted = {worker_env[name] for name in ("FMNIST_IMAGES_TOPIC", "FMNIST_PREDICTIONS_TOPIC", "FMNIST_DLQ_TOPIC")}
    assert wanted <= asyncio.run(topics())


def test_a_healthy_start_on_new_topics_logs_no_error(
    start_worker, worker_env: dict[str, str], kafka_bootstrap: str, test_split
) -> None:
    """Every topic of this worker is new (its own names), as on a fresh broker: a start that
    works logs nothing an operator must read as an ERROR (a pointer topic just created used
    to log dozens of "not found in cluster metadata")."""
    worker = start_worker()
    wait_until(lambda: requests.get(worker.url + "/readyz", timeout=5).ok, timeout=60, what="/readyz 200")
    topic = load_settings(worker_env).topics.images
    produce_images(kafka_bootstrap, topic, test_split.images[:200], test_split.labels[:200])
    wait_until(lambda: worker.accuracy()["images"] >= 200, timeout=60, what="200 images counted")
    time.sleep(6.0)  # pointer polls and a partition check
    errors = [line for line in worker.log_path.read_text(errors="replace").splitlines() if "ERROR" in line]
    assert not errors, "\n".join(errors[:10])
