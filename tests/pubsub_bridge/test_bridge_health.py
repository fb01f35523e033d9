"""/healthz and /readyz of the bridge on the real Pub/Sub emulator.

``/readyz`` is polled from before the bridge starts: any answer before the streaming pulls
are open is a 503 naming what is missing, then 200 with every check passing; ``/healthz``
stays 200 while images flow. Without its subscription the bridge never gets ready: it
exits 1 at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from bridge_helpers import Bridge, checked_totals, offline_scores, publish_images
from fmnist_faust.config import Settings
from fmnist_faust.core import dataset

pytestmark = pytest.mark.pubsub


@pytest.mark.timeout(120)
def test_readyz_then_healthz_while_images_flow(
    pubsub_setup: Settings,
    bridge_env: dict[str, str],
    start_bridge: Callable[..., Bridge],
    test_split: dataset.Split,
    tiny_model: Path,
) -> None:
    settings = pubsub_setup
    answers: list[tuple[int, dict]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                response = requests.get(f"http://127.0.0.1:{bridge_env['BRIDGE_WEB_PORT']}/readyz", timeout=2)
                answers.append((response.status_code, response.json()))
            except requests.ConnectionError:
                pass
            time.sleep(0.005)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        bridge = start_bridge()
        deadline = time.monotonic() + 30
        while not any(status == 200 for status, _ in answers) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        poller.join(5)
    first_ready = next(i for i, (status, _) in enumerate(answers) if status == 200)
    for status, body in answers[:first_ready]:
        assert status == 503 and not body["checks"]["streaming"]["ok"], body
    ready = answers[first_ready][1]
    assert ready["status"] == "ok" and set(ready["checks"]) == {"model", "subscription", "streaming", "store"}
    print(f"\n/readyz: {first_ready} answers of 503 before the first 200")

    indices = range(500)
    publish_images(settings, test_split, indices)
    bridge.wait_for(lambda b: b.accuracy()["images"] >= 500, "500 images counted")
    health = bridge.get("/healthz").json()
    assert health["status"] == "ok" and set(health["checks"]) == {"batcher", "streams", "batches"}
    assert bridge.get("/readyz").json()["status"] == "ok"
    expected, _, version = offline_scores(tiny_model, test_split, indices, settings.pipeline.window_seconds)
    assert checked_totals(bridge.accuracy()) == expected.report(version)
