"""Restart the bridge (SIGTERM, start) and check that images published after it answers are all counted.

    python -m bench.bridge_restart --rounds 5 --streams 4 --prestream 20000

The soak's open question, reproduced on demand: one bridge on fresh names (emulator from
``PUBSUB_EMULATOR_HOST``), ``--prestream`` images streamed and counted first; then each
round SIGTERMs the bridge, starts a new one, waits until it answers ``/accuracy/``,
publishes ``--images`` new images in publish calls of ``--chunk`` (every future confirmed)
and waits up to ``--wait`` seconds for the total. A short round lists the ids missing from
the store, stops the bridge and pulls the subscription for what is left. One JSON line per
round on stdout; exit 1 if any round came up short.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
import uuid
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from fmnist_faust.client import MainManager
from fmnist_faust.config import Settings, load_settings, run_names
from fmnist_faust.core import dataset
from fmnist_faust.core.contract import encode_image
from pubsub_bridge.admin import setup

from .common import ROOT, ServiceProc, env_with, free_port
from .stages import delete_pubsub_tagged


def publish(settings: Settings, split: dataset.Split, ids: range, prefix: str, chunk: int) -> None:
    """One flush per ``chunk`` images: every publish future is confirmed before the next chunk."""
    producer = MainManager("pubsub", settings).create_producer(settings.topics.images)
    try:
        for start in range(ids.start, ids.stop, chunk):
            for i in range(start, min(start + chunk, ids.stop)):
                j = i % len(split.labels)
                image_id = f"{prefix}-{i:07d}"
                producer.produce(encode_image(image_id, split.images[j], int(split.labels[j])), key=image_id)
            producer.flush()
    finally:
        producer.close()


def counted(bridge: ServiceProc) -> int:
    return int(bridge.get("/accuracy/")["images"])


def metric(bridge: ServiceProc, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(bridge.url("/metrics"), timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def wait_counted(bridge: ServiceProc, target: int, timeout: float) -> tuple[int, float]:
    """(images counted, seconds waited) once ``target`` is reached or ``timeout`` passed."""
    started = time.monotonic()
    while True:
        n = counted(bridge)
        if n >= target or time.monotonic() - started > timeout:
            return n, round(time.monotonic() - started, 2)
        time.sleep(0.1)


def missing_ids(store: Path, prefix: str, ids: range) -> list[str]:
    with closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)) as db:
        keys = {row[0] for row in db.execute("SELECT key FROM processed WHERE key LIKE ?", (f"id:{prefix}-%",))}
    return [f"{prefix}-{i:07d}" for i in ids if f"id:{prefix}-{i:07d}" not in keys]


def pull_left(settings: Settings, subscription: str, seconds: float) -> dict[str, dict[str, str]]:
    """Synchronous pulls for ``seconds`` (nothing acked): key -> attributes of what ``subscription`` hands out."""
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    path = subscriber.subscription_path(settings.pubsub.project, subscription)
    found: dict[str, dict[str, str]] = {}
    deadline = time.monotonic() + seconds
    with subscriber:
        while time.monotonic() < deadline:
            response = subscriber.pull(subscription=path, max_messages=1000, timeout=5)
            for received in response.received_messages:
                found[received.message.attributes.get("key", "?")] = dict(received.message.attributes)
            if not response.received_messages:
                time.sleep(0.5)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bridge_restart", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--streams", type=int, default=4, help="BRIDGE_STREAMS")
    parser.add_argument("--prestream", type=int, default=20_000, help="images counted before the first restart")
    parser.add_argument("--images", type=int, default=1000, help="images published after each restart")
    parser.add_argument("--chunk", type=int, default=100, help="images per flushed publish call")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the total after publishing")
    parser.add_argument("--ack-deadline", default="10", help="PUBSUB_ACK_DEADLINE_SECONDS")
    parser.add_argument("--max-delivery-attempts", default="5", help="PUBSUB_MAX_DELIVERY_ATTEMPTS (5-100)")
    args = parser.parse_args(argv)

    tag = "brr-" + uuid.uuid4().hex[:6]
    run_dir = ROOT / ".run" / "bridge-restart" / tag
    run_dir.mkdir(parents=True, exist_ok=True)
    store = run_dir / "bridge-state.sqlite3"
    env = env_with(
        **run_names(tag),
        BRIDGE_WEB_PORT=str(free_port()),
        FMNIST_WEB_HOST="127.0.0.1",
        BRIDGE_STATE_PATH=str(store),
        BRIDGE_STREAMS=str(args.streams),
        FMNIST_DEDUPE_SECONDS="86400",  # keep every key: the store is the list of what was counted
        FMNIST_LOG_LEVEL="info",
        PUBSUB_ACK_DEADLINE_SECONDS=args.ack_deadline,
        PUBSUB_MAX_DELIVERY_ATTEMPTS=args.max_delivery_attempts,
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
    )
    settings = load_settings(env)
    if not settings.pubsub.emulator_host:
        print("bridge_restart: needs PUBSUB_EMULATOR_HOST (source .services.env)", file=sys.stderr)
        return 2
    split = dataset.load_split("test")
    setup(settings)
    bridge = ServiceProc(
        [sys.executable, "-m", "pubsub_bridge", "run"],
        env,
        run_dir / "bridge.log",
        int(env["BRIDGE_WEB_PORT"]),
        "/accuracy/",
    )
    short = 0
    sent = 0  # ids published so far
    expected = 0  # images the store should hold
    try:
        bridge.start(ready_timeout=120)
        if args.prestream:
            publish(settings, split, range(0, args.prestream), "brr", 1000)
            sent = expected = args.prestream
            n, _ = wait_counted(bridge, expected, 300)
            print(json.dumps({"tag": tag, "prestream": args.prestream, "counted": n}), flush=True)
        for round_no in range(1, args.rounds + 1):
            before = counted(bridge)
            bridge.stop()
            bridge.start(ready_timeout=120)
            ids = range(sent, sent + args.images)
            published_at = time.monotonic()
            publish(settings, split, ids, "brr", args.chunk)
            sent += args.images
            expected += args.images
            n, waited = wait_counted(bridge, expected, args.wait)
            row: dict[str, Any] = {
                "round": round_no,
                "streams": args.streams,
                "before": before,
                "expected": expected,
                "counted": n,
                "publish_s": round(time.monotonic() - published_at - waited, 2),
                "waited_s": waited,
                "ready_s": bridge.ready_s,
                # this process's own counters: acked == counted here, nacked 0, means it acked nothing uncounted
                "acked_by_new_bridge": metric(bridge, "fmnist_bridge_acked_total"),
                "nacked_by_new_bridge": metric(bridge, "fmnist_bridge_nacked_total"),
                "counted_by_new_bridge": n - before,
            }
            if n < expected:
                short += 1
                lost = missing_ids(store, "brr", ids)
                row["missing"] = len(lost)
                row["missing_range"] = [lost[0], lost[-1]] if lost else None
                bridge.stop()
                row["left_in_subscription"] = len(pull_left(settings, settings.pubsub.images_subscription, 5))
                letters = pull_left(settings, settings.pubsub.dead_letter_subscription, 5)
                row["missing_dead_lettered"] = len(set(lost) & set(letters))
                row["dead_letter_delivery_counts"] = sorted(
                    {a.get("CloudPubSubDeadLetterSourceDeliveryCount", "?") for k, a in letters.items() if k in lost}
                )
                bridge.start(ready_timeout=120)
                expected, _ = wait_counted(bridge, expected, float(args.ack_deadline) + 10)
                row["counted_after_pull_and_restart"] = expected  # later rounds are judged from here
            print(json.dumps(row), flush=True)
    finally:
        bridge.stop()
        delete_pubsub_tagged(settings, tag)
    print(
        json.dumps({"tag": tag, "rounds": args.rounds, "short_rounds": short, "log": str(bridge.log_path)}), flush=True
    )
    return 1 if short else 0


if __name__ == "__main__":
    sys.exit(main())
