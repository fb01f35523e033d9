"""/healthz and /readyz of the Faust worker, and a crashed agent, on the real broker.

``/readyz`` is polled from before the worker starts: it must answer 503 (with the check that
is not yet passing) before its first 200, and the 200 must come with the partitions
assigned. A classify agent crashed by the documented fault injection
``FMNIST_FAULT_CRASH_AGENT_AFTER`` must end the process with status 3 at once; a worker
started after it counts every image exactly once.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from fmnist_faust.agents import EXIT_AGENT_CRASHED
from fmnist_faust.config import load_settings
from support import ROOT, offline_confusion, produce_images, wait_until

pytestmark = pytest.mark.kafka


def _probe(env: dict[str, str]) -> int:
    """The container health probe's exit status (docker-compose and the Dockerfile run it)."""
    command = [str(Path(sys.executable).with_name("fmnist-health")), "worker", "--ready"]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, timeout=30).returncode


def _poll(url: str, answers: list[tuple[float, int, dict]], stop: threading.Event) -> None:
    """Record (time, status, body) of every answer from ``url`` until ``stop``."""
    while not stop.is_set():
        try:
            response = requests.get(url, timeout=2)
            answers.append((time.monotonic(), response.status_code, response.json()))
        except requests.ConnectionError:
            pass
        time.sleep(0.01)


@pytest.mark.timeout(120)
def test_readyz_is_503_until_assigned_and_recovered_and_healthz_stays_green(
    start_worker: Any, worker_env: dict[str, str], kafka_bootstrap: str, tiny_model: Path, test_split: Any
) -> None:
    assert _probe(worker_env) == 1  # nothing answers yet
    answers: list[tuple[float, int, dict]] = []
    stop = threading.Event()
    poller = threading.Thread(
        target=_poll, args=(f"http://127.0.0.1:{worker_env['FMNIST_WEB_PORT']}/readyz", answers, stop), daemon=True
    )
    poller.start()
    try:
        worker = start_worker()
        wait_until(lambda: any(status == 200 for _, status, _ in answers), timeout=60, what="/readyz 200")
    finally:
        stop.set()
        poller.join(5)
    first_ready = next(i for i, (_, status, _) in enumerate(answers) if status == 200)
    before = answers[:first_ready]
    assert before and all(status == 503 for _, status, _ in before), [a[1] for a in answers[:first_ready]]
    waiting_on = {name for _, _, body in before for name, check in body["checks"].items() if not check["ok"]}
    assert waiting_on <= {"assignment", "recovery"} and waiting_on, waiting_on
    ready = answers[first_ready][2]
    assert ready["status"] == "ok" and ready["checks"]["assignment"]["detail"] == "images partitions [0, 1, 2, 3]"
    print(f"\n/readyz: {len(before)} answers of 503 over {answers[first_ready][0] - answers[0][0]:.2f} s before 200")

    assert worker.get("/healthz").json()["status"] == "ok"
    assert _probe(worker_env) == 0
    settings = load_settings(worker_env)
    images, labels = test_split.images[:1000], test_split.labels[:1000].astype(int)
    produce_images(kafka_bootstrap, settings.topics.images, images, labels)
    wait_until(lambda: worker.accuracy()["images"] >= 1000, timeout=60, what="1,000 images counted")
    health = worker.get("/healthz").json()
    assert health["status"] == "ok" and health["checks"]["batches"]["ok"] and health["checks"]["partitions"]["ok"]
    assert worker.get("/readyz").json()["status"] == "ok"
    assert worker.accuracy()["confusion"] == offline_confusion(tiny_model, images, labels)


@pytest.mark.timeout(180)
def test_a_crashed_agent_exits_the_worker_and_nothing_is_lost(
    start_worker: Any, worker_env: dict[str, str], kafka_bootstrap: str, tiny_model: Path, test_split: Any
) -> None:
    settings = load_settings(worker_env)
    images, labels = test_split.images[:3000], test_split.labels[:3000].astype(int)
    crashing = start_worker(FMNIST_FAULT_CRASH_AGENT_AFTER="1500")
    produced = time.monotonic()
    produce_images(kafka_bootstrap, settings.topics.images, images, labels)
    assert crashing.proc is not None
    returncode = crashing.proc.wait(60)
    exited = time.monotonic() - produced
    log = crashing.log_path.read_text(errors="replace")
    assert returncode == EXIT_AGENT_CRASHED, log[-3000:]
    assert "the classify agent crashed (RuntimeError('injected fault" in log
    assert f"exiting with status {EXIT_AGENT_CRASHED}" in log

    worker = start_worker()  # the next owner reads from the last counted offsets
    wait_until(lambda: worker.accuracy()["images"] >= 3000, timeout=90, what="3,000 images counted")
    time.sleep(2.0)
    report = worker.accuracy()
    assert report["images"] == 3000 and report["confusion"] == offline_confusion(tiny_model, images, labels)
    print(
        f"\nagent crashed after 1,500 records: exit {returncode} {exited:.1f} s after producing; restart counted 3,000"
    )
