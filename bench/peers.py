"""The same job on two peers, each written as its docs recommend, for ``make bench``'s ``peers`` stage.

    python -m bench.peers bytewax|quixstreams --bootstrap B --topic T --out O --images N --model PATH

Each consumes the pre-loaded images topic (one image per record, our JSON contract) from the
beginning, batches records the peer's own way, decodes and classifies each batch with the
same code and model as the worker (``decode_record``, one ``Classifier.predict`` per batch)
and produces one JSON prediction per image (key = id) on ``O``. So the difference measured
is the framework's: how records reach the batch and how predictions leave.

- bytewax 0.21.1: ``KafkaSource`` -> ``op.collect(max_size=500, timeout=10 ms)`` keyed by
  partition -> predict -> ``KafkaSink`` (the pattern of bytewax's docs for batching).
- quix-streams 3.28.1: a ``BatchingSink`` whose ``write`` predicts the batch it is handed
  at each checkpoint (every 500 messages) and produces the predictions, flushing before the
  checkpoint commits (the docs' way to write batches).

Prints one JSON line: images, and CPU seconds of the whole process from its first batch to
the end (all threads: bytewax's Rust runtime, librdkafka's), as the worker's is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_faust.core.contract import DEFAULT_MAX_MESSAGE_BYTES, ImageMessage, Prediction, decode_record
from fmnist_faust.core.model import Classifier, load_classifier

BATCH = 500
LINGER = timedelta(milliseconds=10)


class Job:
    """Decode and classify one batch of record values; tracks the CPU from the first batch."""

    def __init__(self, model_path: Path) -> None:
        self.classifier: Classifier = load_classifier(model_path)
        self.first_cpu: float | None = None
        self.images = 0

    def predict(self, values: list[tuple[bytes | None, bytes | None]]) -> list[tuple[bytes, bytes]]:
        """(key, value) records -> (key, prediction) records, one per image."""
        if self.first_cpu is None:
            self.first_cpu = time.process_time()
        images = [decode_record(value, key, DEFAULT_MAX_MESSAGE_BYTES) for key, value in values]
        valid = [image for image in images if isinstance(image, ImageMessage)]
        predicted, confidence = self.classifier.predict(np.stack([image.pixels for image in valid]))
        version = self.classifier.version
        self.images += len(valid)
        return [
            (image.id.encode(), Prediction(image.id, guess, conf, image.label, version, None).encode())
            for image, guess, conf in zip(valid, predicted.tolist(), confidence.tolist())
        ]

    def report(self) -> str:
        cpu = time.process_time() - (self.first_cpu or time.process_time())
        return json.dumps({"images": self.images, "cpu_s": round(cpu, 3)})


def run_bytewax(args: argparse.Namespace, job: Job) -> None:
    import bytewax.operators as op
    from bytewax.connectors.kafka import KafkaSinkMessage
    from bytewax.connectors.kafka import operators as kop
    from bytewax.dataflow import Dataflow
    from bytewax.testing import run_main

    flow = Dataflow("fmnist")
    records = kop.input("images", flow, brokers=[args.bootstrap], topics=[args.topic], tail=False)
    keyed = op.key_on("by_partition", records.oks, lambda message: str(message.partition))
    batches = op.collect("batch", keyed, timeout=LINGER, max_size=BATCH)

    def predict(item: tuple[str, list[Any]]) -> list[KafkaSinkMessage]:
        return [KafkaSinkMessage(key, value) for key, value in job.predict([(m.key, m.value) for m in item[1]])]

    kop.output("predictions", op.flat_map("predict", batches, predict), brokers=[args.bootstrap], topic=args.out)
    run_main(flow)


def run_quixstreams(args: argparse.Namespace, job: Job) -> None:
    from quixstreams import Application
    from quixstreams.sinks import BatchingSink, SinkBatch

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=f"bench-quix-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        commit_every=BATCH,
        state_dir=str(Path(args.state_dir) / "quix-state"),
        loglevel="WARNING",
    )
    out = app.topic(args.out, key_serializer="bytes", value_serializer="bytes")
    producer = app.get_producer()

    class PredictSink(BatchingSink):
        def write(self, batch: SinkBatch) -> None:
            for key, value in job.predict([(item.key, item.value) for item in batch]):
                producer.produce(out.name, value=value, key=key)
            producer.flush()

    images = app.topic(args.topic, key_deserializer="bytes", value_deserializer="bytes")
    app.dataframe(images).sink(PredictSink())
    with producer:
        app.run(count=args.images, timeout=60.0, collect=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("peer", choices=("bytewax", "quixstreams"))
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--state-dir", default=os.environ.get("TMPDIR", "/tmp"))
    args = parser.parse_args()
    job = Job(args.model)
    (run_bytewax if args.peer == "bytewax" else run_quixstreams)(args, job)
    print(job.report(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
