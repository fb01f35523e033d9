"""Console scripts: ``fmnist-train``, ``fmnist-produce``, ``fmnist-logger``, ``fmnist-health``.

The producer and logger are the old demo's image generator and result logger, done
properly, on either backend through :class:`~fmnist_faust.client.MainManager`.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from .client import DeliveryError, Producer
from .config import load_settings
from .netutil import get_json


def train_main(argv: Sequence[str] | None = None) -> int:
    """Train the default MLP unless a verified model already exists."""
    from .core import augment, dataset, model

    settings = load_settings()
    parser = argparse.ArgumentParser(prog="fmnist-train", description=train_main.__doc__)
    parser.add_argument("--out", type=Path, default=settings.model.path, help="model path (.joblib)")
    parser.add_argument("--force", action="store_true", help="retrain even if a valid model exists")
    parser.add_argument(
        "--hidden", default=",".join(map(str, model.DEFAULT_HIDDEN)), help="hidden layer sizes, comma separated"
    )
    parser.add_argument(
        "--max-iter",
        type=int,
        default=model.DEFAULT_MAX_ITER,
        help="epochs of the learning-rate schedule, fewer if the time budget cannot hold them (default %(default)s)",
    )
    parser.add_argument(
        "--augment",
        choices=tuple(augment.SHIFTS),
        default=augment.DEFAULT_AUGMENTATION,
        help="training-set augmentation: shift1 adds 4 copies shifted by one pixel (up, down, left, "
        "right), none trains on the images as they are (default %(default)s)",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=model.DEFAULT_TIME_BUDGET,
        help="seconds; no epoch starts that would end after it (default %(default).0f)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, shuffling and weights")
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=model.DEFAULT_TRAIN_BLAS_THREADS or 0,
        help="BLAS threads while training; 0 = the library's default, all cores (default %(default)s)",
    )
    parser.add_argument("--subset", type=int, default=0, help="train on the first N images only (0 = all)")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    args = parser.parse_args(argv)

    if not args.force:
        try:
            manifest = model.verify(args.out)
        except model.ModelError as reason:
            print(f"training a new model: {reason}", file=sys.stderr)
        else:
            print(
                f"verified model {manifest['model_version']} at {args.out}: "
                f"test accuracy {manifest['test_accuracy']:.4f} (use --force to retrain)"
            )
            return 0
    train = dataset.load_split("train", settings.model.data_dir)
    test = dataset.load_split("test", settings.model.data_dir)
    images, labels = train.images, train.labels
    if args.subset:
        images, labels = images[: args.subset], labels[: args.subset]
    hidden = tuple(int(h) for h in args.hidden.split(",") if h)
    manifest = model.train(
        images,
        labels,
        test.images,
        test.labels,
        args.out,
        hidden=hidden,
        max_iter=args.max_iter,
        seed=args.seed,
        verbose=not args.quiet,
        augmentation=args.augment,
        time_budget=args.time_budget,
        blas_threads=args.blas_threads or None,
    )
    print(
        f"saved {args.out} ({manifest['model_version']}): test accuracy "
        f"{manifest['test_accuracy']:.4f}, trained in {manifest['train_seconds']:.0f} s"
    )
    return 0


def _progress(done: int, total: int, started: float, label: str) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    rate = done / max(time.perf_counter() - started, 1e-9)
    sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate:,.0f}/s")
    sys.stderr.flush()


def produce_main(argv: Sequence[str] | None = None) -> int:
    """Replay Fashion-MNIST images with labels onto the images topic, or (--labels) only their
    labels onto the labels topic (exit 1 if any was not delivered)."""
    from .client import MainManager
    from .core import dataset
    from .core.contract import encode_image, encode_label

    settings = load_settings()
    parser = argparse.ArgumentParser(prog="fmnist-produce", description=produce_main.__doc__)
    parser.add_argument("--backend", choices=("kafka", "pubsub"), default="kafka")
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument(
        "--count",
        type=int,
        default=0,
        help="images to send (0 = the whole split); more than the split cycles through it with fresh ids",
    )
    parser.add_argument("--rate", type=float, default=0.0, help="images per second (0 = unlimited)")
    parser.add_argument("--id-prefix", default="", help="prefix for image ids (default: the split name)")
    parser.add_argument("--topic", help=f"default {settings.topics.images} ({settings.topics.labels} with --labels)")
    parser.add_argument("--no-labels", action="store_true", help="send images without labels")
    parser.add_argument(
        "--labels",
        action="store_true",
        help="send the labels of the same images instead, {id, label} keyed by id, for images sent with "
        "--no-labels: the delayed ground truth (see docs/labels.md)",
    )
    parser.add_argument("--shuffle", type=int, metavar="SEED", help="with --labels: send them in a shuffled order")
    parser.add_argument(
        "--batch",
        type=int,
        default=0,
        help="images per message as batch records (1-FMNIST_MAX_BATCH_IMAGES; default 0: one image per message)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not 0 <= args.batch <= settings.pipeline.max_batch_images:
        parser.error(f"--batch must be 0-{settings.pipeline.max_batch_images} (FMNIST_MAX_BATCH_IMAGES)")
    if args.labels and (args.batch or args.no_labels):
        parser.error("--labels sends labels only: not with --batch or --no-labels")
    if args.shuffle is not None and not args.labels:
        parser.error("--shuffle is for --labels")
    topic = args.topic or (settings.topics.labels if args.labels else settings.topics.images)

    split = dataset.load_split(args.split, settings.model.data_dir)
    total = args.count or len(split)
    prefix = args.id_prefix or args.split
    if args.backend == "kafka":
        from .kafka_admin import ensure_topics_sync

        ensure_topics_sync(settings)
    producer = MainManager(args.backend, settings).create_producer(topic)
    order = list(range(total))
    if args.shuffle is not None:
        import random

        random.Random(args.shuffle).shuffle(order)
    chunk = 500 if not args.rate else max(1, min(500, int(args.rate / 20)))
    chunk = max(chunk, args.batch)  # a record is sent whole
    started = time.perf_counter()
    sent = 0
    try:
        while sent < total:
            n = min(chunk, total - sent)
            now = time.time()
            numbers = order[sent : sent + n]
            rows = [i % len(split) for i in numbers]
            ids = [f"{prefix}-{i:06d}" for i in numbers]
            labels = [None if args.no_labels else int(split.labels[j]) for j in rows]
            if args.labels:
                truth = [int(split.labels[j]) for j in rows]
                producer.produce_many((encode_label(image_id, label), image_id) for image_id, label in zip(ids, truth))
            elif args.batch:
                for start in range(0, n, args.batch):
                    part = slice(start, start + args.batch)
                    producer.produce_batch(ids[part], split.images[rows[part]], labels[part], now)
            else:
                producer.produce_many(
                    (encode_image(image_id, split.images[j], label, now), image_id)
                    for image_id, j, label in zip(ids, rows, labels)
                )
            sent += n
            if not args.quiet:
                _progress(sent, total, started, "producing")
            if args.rate:
                ahead = sent / args.rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)
    finally:
        failure = _closed(producer)
    elapsed = time.perf_counter() - started
    if not args.quiet:
        sys.stderr.write("\n")
    messages = producer.delivered + producer.failed
    print(
        f"sent {sent} {'labels' if args.labels else 'images'} in {messages} messages to {args.backend}:{topic} in "
        f"{elapsed:.2f} s ({sent / elapsed:,.0f}/s): {producer.delivered} messages delivered, {producer.failed} not delivered, "
        f"{producer.retried} retries"
    )
    if failure is not None:
        print(f"fmnist-produce: {failure}", file=sys.stderr)
        return 1
    return 0


def _closed(producer: Producer) -> DeliveryError | None:
    """Flush and close ``producer``; what was not delivered, if anything."""
    try:
        producer.close()
    except DeliveryError as exc:
        return exc
    return None


class AccuracyTally:
    """Running accuracy over predictions, each image id counted once (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: set[str] = set()
        self.labeled = 0
        self.correct = 0
        self.duplicates = 0

    def add(self, prediction: dict) -> None:
        with self.lock:
            if prediction["id"] in self.seen:
                self.duplicates += 1
                return
            self.seen.add(prediction["id"])
            if prediction.get("correct") is not None:
                self.labeled += 1
                self.correct += bool(prediction["correct"])

    def line(self) -> str:
        with self.lock:
            acc = f"{self.correct / self.labeled:.4f}" if self.labeled else "n/a"
            return (
                f"{len(self.seen)} predictions, {self.labeled} labelled, {self.correct} correct, "
                f"accuracy {acc}, duplicates {self.duplicates}"
            )


def logger_main(argv: Sequence[str] | None = None) -> int:
    """Follow the predictions topic and print running accuracy live."""
    from .client import MainManager, Message
    from .core.contract import decode_prediction

    settings = load_settings()
    parser = argparse.ArgumentParser(prog="fmnist-logger", description=logger_main.__doc__)
    parser.add_argument("--backend", choices=("kafka", "pubsub"), default="kafka")
    parser.add_argument("--topic", default=settings.topics.predictions)
    parser.add_argument(
        "--subscription",
        help="Pub/Sub: subscription to pull from (default "
        f"{settings.pubsub.predictions_subscription}); Kafka: consumer group, whose committed "
        "offsets say where to resume (default: a fresh group each run)",
    )
    parser.add_argument("--count", type=int, default=0, help="stop after N distinct predictions (0 = never)")
    parser.add_argument("--timeout", type=float, default=0, help="stop after this many seconds (0 = never)")
    parser.add_argument("--latest", action="store_true", help="Kafka: start at the end, not the beginning")
    args = parser.parse_args(argv)

    tally = AccuracyTally()
    enough = threading.Event()

    def on_message(message: Message) -> None:
        try:
            tally.add(decode_prediction(message.value))
        except ValueError as exc:
            print(f"skipping a message that is not a prediction: {exc}", file=sys.stderr)
        if args.count and len(tally.seen) >= args.count:
            enough.set()

    group = args.subscription
    if args.backend == "pubsub" and group is None:
        group = settings.pubsub.predictions_subscription
    consumer = MainManager(args.backend, settings).create_consumer(
        args.topic, on_message, group, from_beginning=not args.latest
    )
    started = time.monotonic()
    try:
        while not enough.wait(1.0):
            print(tally.line(), flush=True)
            if args.timeout and time.monotonic() - started > args.timeout:
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.stop()
    print("final: " + tally.line(), flush=True)
    return 0


def health_main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 when the worker's (or the bridge's) /healthz answers 200 (with --ready, /readyz
    too) on the address it is configured to bind: the image's and docker-compose's health
    check, so it follows FMNIST_WEB_HOST and the ports. A failing check is printed."""
    parser = argparse.ArgumentParser(prog="fmnist-health", description=health_main.__doc__)
    parser.add_argument("service", nargs="?", choices=("worker", "bridge"), default="worker")
    parser.add_argument("--ready", action="store_true", help="ask /readyz too")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds to wait for each answer")
    args = parser.parse_args(argv)
    settings = load_settings()
    port = settings.web.port if args.service == "worker" else settings.bridge.web_port
    # A wildcard bind is reached on the loopback address of its family.
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(settings.web.host, settings.web.host)
    if ":" in host:
        host = f"[{host}]"
    for path in ("healthz", "readyz") if args.ready else ("healthz",):
        url = f"http://{host}:{port}/{path}"
        try:
            get_json(url, timeout=args.timeout)
        except (OSError, ValueError) as exc:
            print(f"fmnist-health: the {args.service} at {url} does not answer 200: {exc}", file=sys.stderr)
            return 1
    return 0
