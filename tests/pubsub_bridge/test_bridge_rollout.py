"""Live rollout on the real emulator (markers ``pubsub``, ``chaos``).

The bridge's twin of ``tests/fmnist_faust/test_rollout_kafka.py``: images stream;
``fmnist-model --backend pubsub shadow`` a second version (the pointer row in the bridge's
state store); SIGKILL and restart the bridge mid-stream (it comes back with the shadow);
``promote`` it mid-stream in the same process; ``promote`` a third whose file in the
bridge's directory was tampered with (refused, the second keeps serving); more images.
Then every image is counted once, ``by_model``'s live parts sum to the totals, and every id
got a prediction from a version that was live.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable

import numpy as np
import pytest

from bridge_helpers import Bridge, Collector, publish_images
from fmnist_faust.config import Settings, load_settings
from fmnist_faust.core import dataset
from pubsub_bridge.admin import setup
from support import model_cli, print_figures

pytestmark = [pytest.mark.pubsub, pytest.mark.chaos]
COUNT = 2000
# The emulator keeps a SIGKILLed client's stream registered for tens of seconds and hands it a
# share of the messages, which come back when their 10 s lease expires (test_bridge_integration):
# the test's last images wait for that, about a minute after the kill.
PARTS = ("images", "labeled", "correct", "rejected")


def served(bridge: Bridge) -> dict:
    return bridge.get("/stats/").json()["models"]


def test_bridge_shadow_sigkill_promote_and_a_tampered_candidate(
    pubsub_setup: Settings,
    start_bridge: Callable[..., Bridge],
    collect: Callable[[str], Collector],
    test_split: dataset.Split,
    bridge_env: dict[str, str],
    rollout_models,
) -> None:
    models = rollout_models
    v0, v1, v2 = models.versions
    settings = pubsub_setup
    setup(load_settings(dict(bridge_env, PUBSUB_MAX_DELIVERY_ATTEMPTS="100")))  # see test_bridge_chaos
    predictions = collect(settings.pubsub.predictions_subscription)
    serving = {
        "FMNIST_MODEL_DIR": str(models.serving),
        "FMNIST_MODEL_PATH": str(models.default(models.serving)),
        "BRIDGE_MAX_MESSAGES": "100",
        "FMNIST_BATCH_SIZE": "50",
    }

    def operator(*args: str) -> None:
        done = model_cli(bridge_env, "--backend", "pubsub", *args, directory=models.trusted)
        assert done.returncode == 0, done.stderr

    def images(b: Bridge) -> int:
        return b.accuracy()["images"]

    bridge = start_bridge(**serving)
    publish_images(settings, test_split, range(0, 500))
    bridge.wait_for(lambda b: images(b) >= 500, "the first 500 images under v0")
    operator("shadow", v1)
    bridge.wait_for(lambda b: served(b)["shadow"] == v1, "the bridge shadowing v1")

    sender = threading.Thread(
        target=publish_images,
        args=(settings, test_split, range(500, COUNT)),
        kwargs={"chunk": 100, "pause": 0.6},
        daemon=True,
    )
    sender.start()
    bridge.wait_for(lambda b: images(b) >= 700, "700 images")
    killed_at = images(bridge)
    bridge.stop(signal.SIGKILL)
    bridge = start_bridge(**serving)
    assert (served(bridge)["live"], served(bridge)["shadow"]) == (v0, v1)  # back on the pointer's models
    bridge.wait_for(lambda b: images(b) >= 900, "900 images after the restart", timeout=90)
    pid = bridge.proc.pid if bridge.proc else None
    operator("promote", v1)
    bridge.wait_for(lambda b: served(b)["live"] == v1, "v1 live")
    promoted_at = images(bridge)
    assert promoted_at < COUNT  # promoted mid-stream
    operator("promote", v2)  # the operator's copy is good; the bridge's was tampered with
    bridge.wait_for(lambda b: v2 in served(b)["refused"], "the bridge refusing v2")
    assert "refusing to unpickle a file that was changed" in served(bridge)["refused"][v2]
    sender.join(60)
    assert not sender.is_alive()
    bridge.wait_for(lambda b: images(b) >= COUNT, f"all {COUNT} images", timeout=120)
    assert bridge.proc is not None and bridge.proc.pid == pid and bridge.proc.poll() is None
    assert served(bridge)["live"] == v1
    assert bridge.log().count(f"refusing live model {v2}") == 1

    report = bridge.accuracy()
    print_figures("pubsub", report, killed_at, promoted_at)
    assert report["images"] == report["labeled"] == COUNT
    by_model = report["by_model"]
    live = [part["live"] for part in by_model.values() if part["live"]]
    for key in PARTS:
        assert sum(part[key] for part in live) == report[key], key
    assert np.sum([part["confusion"] for part in live], axis=0).tolist() == report["confusion"]
    assert set(by_model) == {v0, v1}
    assert by_model[v0]["role"] == "retired" and by_model[v1]["role"] == "live"
    assert by_model[v0]["live"]["images"] >= 900 and by_model[v1]["live"]["images"] > 0
    shadow = by_model[v1]["shadow"]
    assert shadow["compared"] >= 100 and 0.5 < shadow["agreement"] <= 1.0

    answered = predictions.wait(COUNT)
    assert {p.attributes["id"] for p in answered} == {f"img-{i:05d}" for i in range(COUNT)}
    assert {json.loads(p.value)["model_version"] for p in answered} <= {v0, v1}  # v2 never classified an image
    assert bridge.stop() == 0
