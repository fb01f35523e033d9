"""The Pub/Sub emulator keeps serving a stopped subscriber's streaming pulls: a minimal reproduction.

    PUBSUB_EMULATOR_HOST=127.0.0.1:8306 python tools/emulator_dead_stream.py --rounds 4 --streams 4

Only google-cloud-pubsub, none of the project's code. One subscription (ack deadline 10 s,
dead-letter policy: 5 delivery attempts). Each round stops the running subscriber process
the clean way (SIGTERM -> every streaming pull cancelled and waited for, client closed,
process exited), starts a new one (``--streams`` streaming pulls, acking everything it
receives and printing each message's key), waits until its streams are open, publishes
``--images`` messages in publish calls of ``--chunk`` (each confirmed), and waits
``--wait`` seconds. Reported per round: how many the live subscriber received, how many it
never saw, how long the last one took, and how many of the missing ones the dead-letter
topic holds (with their delivery count). A message the live subscriber never saw but the
dead-letter topic holds was handed to stopped streams only, until its attempts ran out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

PROJECT = os.environ.get("GOOGLE_CLOUD_PROJECT", "fmnist-local")


def subscriber_process(subscription: str, streams: int, lease_s: int) -> int:
    """The child: ``streams`` streaming pulls that ack everything and print each message's key."""
    from google.cloud import pubsub_v1

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lock = threading.Lock()

    def received(message: Any) -> None:
        with lock:
            print(json.dumps([message.attributes["key"], message.delivery_attempt]), flush=True)
        message.ack()

    subscriber = pubsub_v1.SubscriberClient()
    with subscriber:
        # max_duration_per_lease_extension caps the stream's ack deadline (the library asks 60 s otherwise):
        # it is how long the emulator leases a message to a stream, live or stopped.
        flow = pubsub_v1.types.FlowControl(max_duration_per_lease_extension=lease_s)
        futures = [subscriber.subscribe(subscription, received, flow_control=flow) for _ in range(streams)]
        time.sleep(1.0)  # the streams are open by now
        print(json.dumps(["ready", None]), flush=True)
        stop.wait()
        for future in futures:
            future.cancel()
        for future in futures:
            try:
                future.result(timeout=30)
            except Exception:  # cancelled: the expected end
                pass
    return 0


class Child:
    """A subscriber process and the keys it received (key -> delivery attempts seen)."""

    def __init__(self, subscription: str, streams: int, lease_s: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", subscription, "--streams", str(streams), "--lease", str(lease_s)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.keys: dict[str, list[int | None]] = {}
        self.ready = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(60):
            raise RuntimeError("the subscriber process did not start")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            key, attempt = json.loads(line)
            if key == "ready":
                self.ready.set()
                continue
            with self._lock:
                self.keys.setdefault(key, []).append(attempt)

    def received(self) -> set[str]:
        with self._lock:
            return set(self.keys)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def pull_all(subscriber: Any, path: str, seconds: float) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        response = subscriber.pull(subscription=path, max_messages=1000, timeout=5)
        for m in response.received_messages:
            found[m.message.attributes["key"]] = dict(m.message.attributes)
        if response.received_messages:
            subscriber.acknowledge(subscription=path, ack_ids=[m.ack_id for m in response.received_messages])
        else:
            time.sleep(0.5)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=100)
    parser.add_argument("--wait", type=float, default=70.0)
    parser.add_argument("--lease", type=int, default=10, help="seconds a stream leases a message (10-600)")
    parser.add_argument("--child", metavar="SUBSCRIPTION", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return subscriber_process(args.child, args.streams, args.lease)
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        print("set PUBSUB_EMULATOR_HOST", file=sys.stderr)
        return 2

    from google.cloud import pubsub_v1
    from google.cloud.pubsub_v1 import types

    tag = uuid.uuid4().hex[:6]
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic, dead_topic = (
        publisher.topic_path(PROJECT, f"dead-stream-{tag}"),
        publisher.topic_path(PROJECT, f"dead-stream-dl-{tag}"),
    )
    sub, dead_sub = (
        subscriber.subscription_path(PROJECT, f"dead-stream-{tag}"),
        subscriber.subscription_path(PROJECT, f"dead-stream-dl-{tag}"),
    )
    publisher.create_topic(name=topic)
    publisher.create_topic(name=dead_topic)
    subscriber.create_subscription(
        request=types.Subscription(
            name=sub,
            topic=topic,
            ack_deadline_seconds=10,
            dead_letter_policy=types.DeadLetterPolicy(dead_letter_topic=dead_topic, max_delivery_attempts=5),
        )
    )
    subscriber.create_subscription(request=types.Subscription(name=dead_sub, topic=dead_topic, ack_deadline_seconds=10))
    short = 0
    sent = 0
    all_missing: set[str] = set()
    received_before: set[str] = set()
    try:
        child = Child(sub, args.streams, args.lease)
        for round_no in range(1, args.rounds + 1):
            child.stop()
            child = Child(sub, args.streams, args.lease)
            keys = [f"m-{i:06d}" for i in range(sent, sent + args.images)]
            sent += args.images
            published = time.monotonic()
            for start in range(0, len(keys), args.chunk):
                futures = [publisher.publish(topic, b"x", key=k) for k in keys[start : start + args.chunk]]
                for future in futures:
                    future.result(timeout=30)
            last = published
            seen = 0
            while time.monotonic() - published < args.wait:
                now_seen = len(child.received() & set(keys))
                if now_seen != seen:
                    seen, last = now_seen, time.monotonic()
                if seen == len(keys):
                    break
                time.sleep(0.1)
            missing = set(keys) - child.received()
            row: dict[str, Any] = {
                "round": round_no,
                "streams": args.streams,
                "published": len(keys),
                "received_by_live_subscriber": len(keys) - len(missing),
                "last_received_after_s": round(last - published, 1),
            }
            if missing:
                short += 1
                row["missing"] = len(missing)
            all_missing |= missing
            received_before |= child.received()
            print(json.dumps(row), flush=True)
        child.stop()
        all_missing -= received_before | child.received()
        left = pull_all(subscriber, sub, 15)
        letters = pull_all(subscriber, dead_sub, 15)
        lettered = all_missing & set(letters)
        print(
            json.dumps(
                {
                    "missing_in_all_rounds": len(all_missing),
                    "of_them_in_dead_letter_topic": len(lettered),
                    "their_delivery_counts": sorted(
                        {letters[k].get("CloudPubSubDeadLetterSourceDeliveryCount", "?") for k in lettered}
                    ),
                    "dead_letter_topic_holds": len(letters),
                    "of_them_left_in_the_subscription": len(all_missing & set(left)),
                }
            ),
            flush=True,
        )
    finally:
        subscriber.delete_subscription(subscription=sub)
        subscriber.delete_subscription(subscription=dead_sub)
        publisher.delete_topic(topic=topic)
        publisher.delete_topic(topic=dead_topic)
        subscriber.close()
        publisher.stop()
    print(json.dumps({"rounds": args.rounds, "short_rounds": short}), flush=True)
    return 1 if short else 0


if __name__ == "__main__":
    sys.exit(main())
