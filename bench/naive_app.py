"""The naive baseline: the old demo's per-message Faust agent, on the shared core.

One event in, one ``predict`` call (a batch of one through
:func:`~fmnist_faust.core.pipeline.classify_batch`), one ``send`` out. No batching, no
tables, no exactly-once bookkeeping: it is a generous lower bound for what
fmnist-faust's batched agent must beat. Run by the harness as
``faust -A bench.naive_app worker`` with its own app id and topics:

    BENCH_NAIVE_APP_ID, BENCH_NAIVE_IN, BENCH_NAIVE_OUT, BENCH_NAIVE_WEB_PORT,
    BENCH_NAIVE_DATADIR (+ KAFKA_BOOTSTRAP_SERVERS, FMNIST_MODEL_PATH from the usual config)
"""

from __future__ import annotations

import os
from typing import Any

import faust

from fmnist_faust.config import load_settings
from fmnist_faust.core.contract import Prediction
from fmnist_faust.core.model import load_classifier
from fmnist_faust.core.pipeline import RawMessage, classify_batch

settings = load_settings()

app = faust.App(
    os.environ.get("BENCH_NAIVE_APP_ID", "fmnist-bench-naive"),
    broker=settings.kafka.broker_url,
    store="memory://",
    datadir=os.environ.get("BENCH_NAIVE_DATADIR", ".run/bench/naive"),
    topic_partitions=settings.kafka.partitions,
    topic_replication_factor=1,
    web_bind="127.0.0.1",
    web_host="127.0.0.1",
    web_port=int(os.environ.get("BENCH_NAIVE_WEB_PORT", "6099")),
    autodiscover=False,
)
_raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
images = app.topic(os.environ.get("BENCH_NAIVE_IN", "bench-naive-images"), **_raw)
predictions = app.topic(os.environ.get("BENCH_NAIVE_OUT", "bench-naive-predictions"), **_raw)
processed = {"count": 0}


@app.agent(images)
async def classify_one_by_one(stream: Any) -> None:
    """Per event: decode + predict one image, send one prediction."""
    classifier = load_classifier(settings.model.path)
    async for event in stream.events():
        message = event.message
        outcome = classify_batch(classifier, [RawMessage(message.value, message.key, message.timestamp)]).outcomes[0]
        if isinstance(outcome, Prediction):
            await predictions.send(key=outcome.id.encode("utf-8"), value=outcome.encode())
        processed["count"] += 1


@app.page("/count/")
async def count(web: Any, request: Any) -> Any:
    """How many events the agent has handled (also the readiness probe)."""
    return web.json(processed)
