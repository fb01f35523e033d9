"""A worker with no valid model stops at start-up with a clear message (real broker)."""

import subprocess
import sys

import pytest

from fmnist_faust.core import model
from support import ROOT

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
