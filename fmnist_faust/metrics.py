"""Prometheus metrics shared by the Faust worker and the Pub/Sub bridge."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from .core.contract import InvalidMessage
from .core.pipeline import BatchResult

IMAGES = Counter("fmnist_images_total", "Images classified")
REJECTED = Counter("fmnist_rejected_total", "Messages dead-lettered", ["kind"])
BATCH_SIZE = Histogram("fmnist_batch_size", "Messages per predict batch",
                       buckets=(1, 8, 32, 64, 128, 256, 512, 1024, 2048))
PREDICT_SECONDS = Histogram("fmnist_predict_seconds", "Decode + batched predict time per batch")
LATENCY_SECONDS = Histogram("fmnist_end_to_end_latency_seconds", "sent_at to prediction",
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
ACCURACY = Gauge("fmnist_accuracy", "Running accuracy over labelled images")


def observe_batch(result: BatchResult) -> None:
    BATCH_SIZE.observe(len(result.outcomes))
    for outcome in result.outcomes:
        if isinstance(outcome, InvalidMessage):
            REJECTED.labels(outcome.kind).inc()
        else:
            IMAGES.inc()
            if outcome.latency_ms is not None:
                LATENCY_SECONDS.observe(outcome.latency_ms / 1000.0)
