"""The bridge end to end on the real Pub/Sub emulator, run as ``python -m pubsub_bridge run``."""

from __future__ import annotations

import base64
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
import requests
from google.cloud import pubsub_v1

from bridge_helpers import Bridge, Collector, checked_totals, offline_scores, publish_images
from fmnist_faust.config import Settings, load_settings
from fmnist_faust.core import dataset
from fmnist_faust.core.contract import decode_prediction, encode_image
from pubsub_bridge.admin import setup
from support import ROOT

pytestmark = pytest.mark.pubsub


def prediction_ids(messages: list) -> Counter:
    """Image id -> number of predictions, checking the ``id`` attribute matches the JSON."""
    ids: Counter = Counter()
    for message in messages:
        prediction = decode_prediction(message.value)
        assert message.attributes["id"] == prediction["id"]
        ids[prediction["id"]] += 1
    return ids


def test_every_image_once_and_totals_equal_offline(
    pubsub_setup: Settings,
    start_bridge: Callable[..., Bridge],
    collect: Callable[[str], Collector],
    test_split: dataset.Split,
    tiny_model: Path,
) -> None:
    settings = pubsub_setup
    predictions = collect(settings.pubsub.predictions_subscription)
    dead_letters = collect(settings.pubsub.dlq_subscription)
    bridge = start_bridge()
    indices = range(1200)
    invalid = [
        (b"not json", {"key": "bad-1", "source": "test"}),
        (json.dumps({"id": "bad-2", "pixels": "AAAA"}).encode(), {"key": "bad-2"}),
        (encode_image("bad-3", test_split.images[0], 3), {"key": "another-id"}),
    ]
    ids = publish_images(settings, test_split, indices, extra=invalid)

    bridge.wait_for(lambda b: b.accuracy()["images"] + b.accuracy()["rejected"] >= 1203, "1,203 messages handled")
    expected, predicted, version = offline_scores(tiny_model, test_split, indices, settings.pipeline.window_seconds)
    for kind in ("not_json", "bad_pixel_count", "key_mismatch"):
        expected.reject(kind)
    assert checked_totals(bridge.accuracy()) == expected.report(version)

    got = predictions.wait(1200)
    counts = prediction_ids(got)
    assert set(counts) == set(ids) and set(counts.values()) == {1}, "exactly one prediction per image id"
    for message in got:
        prediction = json.loads(message.value)
        assert prediction["predicted"] == predicted[int(prediction["id"].split("-")[1])]
        assert prediction["model_version"] == version

    letters = {m.attributes["key"]: m for m in dead_letters.wait(3)}
    assert sorted(letters) == ["another-id", "bad-1", "bad-2"]
    assert letters["bad-1"].value == b"not json" and letters["bad-1"].attributes["source"] == "test"
    assert {k: m.attributes["error_kind"] for k, m in letters.items()} == {
        "bad-1": "not_json",
        "bad-2": "bad_pixel_count",
        "another-id": "key_mismatch",
    }
    assert all(m.attributes["error"] for m in letters.values())

    windows = bridge.get("/accuracy/window/").json()
    assert windows["window_seconds"] == settings.pipeline.window_seconds
    assert sum(w["images"] for w in windows["windows"]) == 1200
    wrong = 1200 - expected.correct
    assert len(bridge.get("/recent/").json()["misclassified"]) == min(24, wrong)
    assert bridge.metric("fmnist_images_total") == 1200
    assert bridge.metric("fmnist_bridge_acked_total") == 1203

    started = time.monotonic()
    assert bridge.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    assert "stopped cleanly: 1200 images counted" in bridge.log()
    assert f"({load_settings({}).bridge.streams} streams)" in bridge.log(), "several streams, by default"


def test_redelivered_and_duplicate_messages_count_once(
    pubsub_setup: Settings,
    start_bridge: Callable[..., Bridge],
    collect: Callable[[str], Collector],
    test_split: dataset.Split,
    tiny_model: Path,
) -> None:
    """Duplicates (same image id, new message) and redeliveries (the same messages again, as
    when acks are lost: a seek back to a snapshot) are acked without being counted again."""
    settings = pubsub_setup
    subscriber = pubsub_v1.SubscriberClient()
    subscription = subscriber.subscription_path(settings.pubsub.project, settings.pubsub.images_subscription)
    snapshot = subscriber.snapshot_path(settings.pubsub.project, f"before-{settings.pubsub.images_subscription}")
    subscriber.create_snapshot(request={"name": snapshot, "subscription": subscription})
    predictions = collect(settings.pubsub.predictions_subscription)
    bridge = start_bridge()

    ids = publish_images(settings, test_split, range(300), extra=[(b"{}", {"key": "junk"})])
    publish_images(settings, test_split, range(100))  # the same ids again, as new messages
    bridge.wait_for(lambda b: b.metric("fmnist_bridge_acked_total") == 401, "401 acks")
    expected, _, version = offline_scores(tiny_model, test_split, range(300), settings.pipeline.window_seconds)
    expected.reject("bad_id")
    assert checked_totals(bridge.accuracy()) == expected.report(version)
    assert bridge.metric("fmnist_duplicates_total") == 100

    subscriber.seek(request={"subscription": subscription, "snapshot": snapshot})  # every ack "lost"
    bridge.wait_for(lambda b: b.metric("fmnist_bridge_acked_total") == 802, "the 401 messages redelivered")
    assert bridge.metric("fmnist_duplicates_total") == 100 + 401
    assert checked_totals(bridge.accuracy()) == expected.report(version)
    counts = prediction_ids(predictions.wait(300))
    assert set(counts) == set(ids) and set(counts.values()) == {1}, "nothing published twice"
    assert bridge.stop() == 0
    subscriber.delete_snapshot(snapshot=snapshot)
    subscriber.close()


def test_sigterm_mid_stream_finishes_what_is_in_flight_and_exits_0(
    pubsub_setup: Settings, start_bridge: Callable[..., Bridge], test_split: dataset.Split, bridge_env: dict[str, str]
) -> None:
    settings = pubsub_setup
    publish_images(settings, test_split, range(3000))  # a backlog: the stop lands mid-stream
    bridge = start_bridge(FMNIST_BATCH_SIZE="100")
    bridge.wait_for(lambda b: b.accuracy()["images"] >= 300, "the first 300 images")
    started = time.monotonic()
    assert bridge.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 8, "a SIGTERM stops the bridge within seconds"
    counted = _counted(Path(bridge_env["BRIDGE_STATE_PATH"]))
    assert 300 <= counted < 3000, "stopped mid-stream"
    assert f"stopped cleanly: {counted} images counted" in bridge.log()
    assert "unhandled" not in bridge.log() and "unacked" not in bridge.log(), "nothing left half done"


def test_sigkill_mid_stream_then_restart_keeps_totals_exact(
    pubsub_setup: Settings,
    start_bridge: Callable[..., Bridge],
    collect: Callable[[str], Collector],
    test_split: dataset.Split,
    tiny_model: Path,
    bridge_env: dict[str, str],
) -> None:
    """Images keep arriving while the bridge is killed and restarted; each is counted once."""
    settings = pubsub_setup
    predictions = collect(settings.pubsub.predictions_subscription)
    indices = range(2000)
    # The emulator keeps a dead client's stream registered for tens of seconds and hands it a
    # share of the messages, which come back only when their lease expires, each trip
    # counting as a delivery attempt: keep that share small (few outstanding, 10 s leases)
    # and allow more attempts than 5, or the emulator dead-letters messages no bridge saw.
    setup(load_settings(dict(bridge_env, PUBSUB_MAX_DELIVERY_ATTEMPTS="100")))
    small = {"BRIDGE_MAX_MESSAGES": "100", "FMNIST_BATCH_SIZE": "50"}
    first = start_bridge(**small)
    sender = threading.Thread(
        target=publish_images, args=(settings, test_split, indices), kwargs={"chunk": 100, "pause": 0.1}
    )
    sender.start()
    first.wait_for(lambda b: b.accuracy()["images"] >= 400, "the first 400 images")
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    counted_at_kill = _counted(Path(bridge_env["BRIDGE_STATE_PATH"]))
    assert 400 <= counted_at_kill < 2000, "killed mid-stream"

    second = start_bridge(**small)
    second.wait_for(lambda b: b.accuracy()["images"] >= 2000, "all 2,000 images", timeout=120)
    sender.join()
    expected, _, version = offline_scores(tiny_model, test_split, indices, settings.pipeline.window_seconds)
    time.sleep(1.0)  # anything still redelivered must not change the totals
    assert checked_totals(second.accuracy()) == expected.report(version)
    assert second.stop() == 0
    assert _counted(Path(bridge_env["BRIDGE_STATE_PATH"])) == 2000
    # At least once on the predictions topic: a batch published but not committed at the kill
    # is published again; every image is there.
    assert set(prediction_ids(predictions.wait(2000))) == {f"img-{i:05d}" for i in indices}


def _counted(state: Path) -> int:
    """Images counted in the bridge's store, read while no bridge runs."""
    with closing(sqlite3.connect(state)) as db:
        return db.execute("SELECT COUNT(*) FROM processed").fetchone()[0]


def test_rest_publisher_interop(
    pubsub_setup: Settings, start_bridge: Callable[..., Bridge], test_split: dataset.Split, bridge_env: dict[str, str]
) -> None:
    """A client that is not ours: the emulator's REST API publishes images (with an ``id``
    attribute, or none) and garbage, and pulls the predictions back."""
    settings = pubsub_setup
    base = f"http://{bridge_env['PUBSUB_EMULATOR_HOST']}/v1/projects/{settings.pubsub.project}"
    bridge = start_bridge(BRIDGE_STREAMS="1")  # the other tests run the default, several streams

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    messages = [
        {
            "data": b64(encode_image(f"rest-{i}", test_split.images[i], int(test_split.labels[i]))),
            "attributes": {"id": f"rest-{i}"},
        }
        for i in range(20)
    ]
    messages += [{"data": b64(encode_image(f"rest-{i}", test_split.images[i], None))} for i in range(20, 25)]
    messages.append({"data": b64(b"\xff\xfe"), "attributes": {"id": "rest-garbage"}})
    response = requests.post(f"{base}/topics/{settings.topics.images}:publish", json={"messages": messages}, timeout=10)
    response.raise_for_status()
    assert len(response.json()["messageIds"]) == 26

    bridge.wait_for(lambda b: b.accuracy()["images"] == 25 and b.accuracy()["rejected"] == 1, "26 messages")
    report = bridge.accuracy()
    assert (report["labeled"], report["rejected_by_kind"]) == (20, {"not_utf8": 1})

    received: dict[str, dict] = {}
    deadline = time.monotonic() + 30
    while len(received) < 25 and time.monotonic() < deadline:
        pulled = (
            requests.post(
                f"{base}/subscriptions/{settings.pubsub.predictions_subscription}:pull",
                json={"maxMessages": 100},
                timeout=10,
            )
            .json()
            .get("receivedMessages", [])
        )
        for item in pulled:
            prediction = decode_prediction(base64.b64decode(item["message"]["data"]))
            assert item["message"]["attributes"]["id"] == prediction["id"]
            received[prediction["id"]] = prediction
        if pulled:
            requests.post(
                f"{base}/subscriptions/{settings.pubsub.predictions_subscription}:acknowledge",
                json={"ackIds": [item["ackId"] for item in pulled]},
                timeout=10,
            ).raise_for_status()
    assert sorted(received) == sorted(f"rest-{i}" for i in range(25))
    assert all(received[f"rest-{i}"]["label"] is None for i in range(20, 25))
    assert bridge.stop() == 0


def test_a_missing_subscription_is_a_clear_error(bridge_env: dict[str, str]) -> None:
    """Without ``setup`` the bridge exits 1 and says what to run."""
    done = subprocess.run(
        [sys.executable, "-m", "pubsub_bridge", "run"],
        env=bridge_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "not found: create it with `python -m pubsub_bridge setup`" in done.stderr
