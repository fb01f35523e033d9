"""Bridge throughput next to the raw streaming-pull-and-ack rate, same emulator, same run.

    python -m pubsub_bridge.measure [--count 10000] [--model PATH]

Both sides consume the same backlog (the Fashion-MNIST test images, encoded as the
producer sends them) from a fresh subscription with the bridge's flow control:

* raw: one streaming pull of the client library with a callback that only acks;
* bridge: ``python -m pubsub_bridge run`` (its own process, as deployed, with
  ``BRIDGE_STREAMS`` streaming pulls): decode,
  one predict per batch, publish predictions, commit to SQLite, ack.

Each rate is messages handled between the first and the last one seen, divided by the
time in between, so process start-up and stream set-up are not counted. Topics and
subscriptions are created with unique names and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path

from fmnist_faust.config import Settings, load_settings, run_names
from fmnist_faust.core import dataset
from fmnist_faust.core.contract import encode_image
from fmnist_faust.netutil import free_port

from .admin import setup, teardown


def _publish(settings: Settings, payloads: list[tuple[bytes, str]]) -> float:
    """Publish the backlog; returns messages per second."""
    from fmnist_faust.client import MainManager

    started = time.perf_counter()
    producer = MainManager("pubsub", settings).create_producer(settings.topics.images)
    try:
        producer.produce_many(payloads)
        producer.flush()
    finally:
        producer.close()
    return len(payloads) / (time.perf_counter() - started)


def raw_rate(settings: Settings, count: int, timeout: float) -> float:
    """Streaming pull that only acks, with the bridge's flow control."""
    from google.cloud import pubsub_v1

    lock = threading.Lock()
    stamps: list[float] = []
    done = threading.Event()

    def on_message(message: object) -> None:
        message.ack()  # type: ignore[attr-defined]
        with lock:
            stamps.append(time.perf_counter())
            if len(stamps) >= count:
                done.set()

    subscriber = pubsub_v1.SubscriberClient()
    with subscriber:
        future = subscriber.subscribe(
            subscriber.subscription_path(settings.pubsub.project, settings.pubsub.images_subscription),
            on_message,
            flow_control=pubsub_v1.types.FlowControl(
                max_messages=settings.bridge.max_messages,
                max_bytes=settings.bridge.max_bytes,
                max_duration_per_lease_extension=settings.pubsub.ack_deadline_s,
            ),
        )
        finished = done.wait(timeout)
        future.cancel()
        future.result()
    if not finished:
        raise RuntimeError(f"raw pull saw {len(stamps)} of {count} messages in {timeout:.0f} s")
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def bridge_rate(env: dict[str, str], count: int, timeout: float, log_path: Path) -> float:
    """Run the bridge over the backlog; rate from /accuracy/ polled every 20 ms."""
    url = f"http://127.0.0.1:{env['BRIDGE_WEB_PORT']}/accuracy/"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pubsub_bridge", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    first: tuple[float, int] | None = None
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the bridge exited with {proc.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    images = json.load(response)["images"]
            except OSError:
                images = 0
            now = time.perf_counter()
            if images and first is None:
                first = (now, images)
            if images >= count and first is not None:
                return (images - first[1]) / (now - first[0])
            time.sleep(0.02)
        raise RuntimeError(f"the bridge did not count {count} images in {timeout:.0f} s; see {log_path}")
    finally:
        proc.terminate()
        proc.wait(30)


def main(argv: Sequence[str] | None = None) -> int:
    base = load_settings()
    parser = argparse.ArgumentParser(
        prog="python -m pubsub_bridge.measure",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--count", type=int, default=10000, help="messages per side (default %(default)s)")
    parser.add_argument("--model", type=Path, default=base.model.path, help="model (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per side")
    args = parser.parse_args(argv)
    if not base.pubsub.emulator_host:
        parser.error("PUBSUB_EMULATOR_HOST is not set: this measures the local emulator only")

    split = dataset.load_split("test", base.model.data_dir)
    payloads = []
    for i in range(args.count):
        image_id = f"measure-{i:06d}"
        j = i % len(split)
        payloads.append((encode_image(image_id, split.images[j], int(split.labels[j]), time.time()), image_id))

    with tempfile.TemporaryDirectory(prefix="fmnist-measure-") as scratch:
        raw_env = dict(os.environ, **run_names(f"measure-{uuid.uuid4().hex[:8]}"))
        bridge_env = dict(
            os.environ,
            **run_names(f"measure-{uuid.uuid4().hex[:8]}"),
            FMNIST_MODEL_PATH=str(args.model),
            BRIDGE_STATE_PATH=str(Path(scratch) / "state.sqlite3"),
            BRIDGE_WEB_PORT=str(free_port()),
        )
        raw_settings, bridge_settings = load_settings(raw_env), load_settings(bridge_env)
        for settings in (raw_settings, bridge_settings):
            setup(settings)
        try:
            published = _publish(raw_settings, payloads)
            raw = raw_rate(raw_settings, args.count, args.timeout)
            _publish(bridge_settings, payloads)
            bridged = bridge_rate(bridge_env, args.count, args.timeout, Path(scratch) / "bridge.log")
        finally:
            for settings in (raw_settings, bridge_settings):
                teardown(settings)
    print(
        f"emulator {base.pubsub.emulator_host}, {args.count} messages of {len(payloads[0][0])} bytes, "
        f"flow control {base.bridge.max_messages} messages, batch {base.pipeline.batch_size}"
    )
    print(f"publish (backlog)          {published:8,.0f} messages/s")
    print(f"raw streaming pull + ack, 1 stream   {raw:8,.0f} messages/s")
    print(
        f"bridge, {base.bridge.streams} streams (classify+publish+commit+ack) {bridged:8,.0f} images/s  "
        f"({bridged / raw:.0%} of one raw stream)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
