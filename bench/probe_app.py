"""Diagnostic Faust apps: what Faust itself costs, with our work taken out.

``BENCH_PROBE_MODE``:

* ``noop``: ``stream.take_events(FMNIST_BATCH_SIZE, FMNIST_BATCH_LINGER)`` and count:
  the ceiling of Faust's consumer -> stream -> batch path on this machine.
* ``forward``: the same, plus one ~200-byte send per event and a wait for the broker's
  acks per batch (what fmnist-faust's agent does to publish predictions), no decode or
  predict: Faust + aiokafka's per-message producing cost.

Run as ``faust -A bench.probe_app worker`` with BENCH_PROBE_APP_ID, BENCH_PROBE_IN,
BENCH_PROBE_OUT, BENCH_PROBE_WEB_PORT, BENCH_PROBE_DATADIR; ``/count/`` reports progress.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import faust

from fmnist_faust.config import load_settings

settings = load_settings()
MODE = os.environ.get("BENCH_PROBE_MODE", "noop")

app = faust.App(
    os.environ.get("BENCH_PROBE_APP_ID", "fmnist-bench-probe"),
    broker=settings.kafka.broker_url,
    store="memory://",
    datadir=os.environ.get("BENCH_PROBE_DATADIR", ".run/bench/probe"),
    topic_partitions=settings.kafka.partitions,
    topic_replication_factor=1,
    web_bind="127.0.0.1",
    web_host="127.0.0.1",
    web_port=int(os.environ.get("BENCH_PROBE_WEB_PORT", "6098")),
    autodiscover=False,
    consumer_max_fetch_size=4 * 1024 * 1024,
    stream_buffer_maxsize=max(4096, settings.pipeline.batch_size * 4),
)
_raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
images = app.topic(os.environ.get("BENCH_PROBE_IN", "bench-probe-images"), **_raw)
out = app.topic(os.environ.get("BENCH_PROBE_OUT", "bench-probe-out"), **_raw)
processed: dict[str, Any] = {"count": 0, "mode": MODE}
PAYLOAD = (
    b'{"id":"x","predicted":9,"class_name":"Ankle boot","confidence":0.99,"label":9,'
    b'"correct":true,"model_version":"mlp-000000000000","latency_ms":12.345}'
)


@app.agent(images)
async def probe(stream: Any) -> None:
    """Batch like fmnist-faust's agent; optionally forward one message per event."""
    topic_name = out.get_topic_name()
    async for events in stream.take_events(settings.pipeline.batch_size, within=settings.pipeline.batch_linger_s):
        if MODE == "forward":
            producer = app.producer
            pending = [await producer.send(topic_name, e.message.key, PAYLOAD, None, None, None) for e in events]
            await asyncio.gather(*pending)
        processed["count"] += len(events)


@app.page("/count/")
async def count(web: Any, request: Any) -> Any:
    """Events handled so far (also the readiness probe)."""
    return web.json(processed)
