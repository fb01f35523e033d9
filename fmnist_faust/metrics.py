"""Prometheus metrics and the ``/stats/`` document, shared by the Faust worker and the Pub/Sub bridge.

Both backends call :func:`observe_batch` per classified batch, and serve
:func:`stats_report` at ``GET /stats/`` and :func:`exposition` at ``GET /metrics``, so
the dashboard and a Prometheus scraper see the same shapes from either one.
"""

from __future__ import annotations

import collections
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from .core.contract import InvalidMessage
from .core.pipeline import BatchResult
from .core.scores import LABEL_OUTCOMES

IMAGES = Counter("fmnist_images_total", "Images classified")
DUPLICATES = Counter(
    "fmnist_duplicates_total",
    "Messages neither counted nor published: their image id (on Pub/Sub, or their message id) was counted before",
)
REJECTED = Counter("fmnist_rejected_total", "Messages dead-lettered", ["kind"])
BATCH_SIZE = Histogram(
    "fmnist_batch_size", "Messages per predict batch", buckets=(1, 8, 32, 64, 128, 256, 512, 1024, 2048)
)
PREDICT_SECONDS = Histogram("fmnist_predict_seconds", "Decode + batched predict time per batch")
LATENCY_SECONDS = Histogram(
    "fmnist_end_to_end_latency_seconds",
    "sent_at to prediction",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ACCURACY = Gauge("fmnist_accuracy", "Running accuracy over labelled images (NaN before the first one)")
# Delayed labels (:mod:`.core.labels`), set at scrape time from the ``/accuracy/`` totals, which
# are global: every worker and bridge replica reports the same figures (aggregate with max).
AWAITING_LABEL = Gauge("fmnist_awaiting_label", "Images classified without a label and still waiting for it")
LABEL_EXPIRED = Gauge("fmnist_label_expired", "Images whose label did not come within FMNIST_LABEL_WAIT_SECONDS")
LABELS = Gauge(
    "fmnist_labels",
    "Messages of the labels stream by outcome: joined, awaiting_image, expired, repeated, late, rejected",
    ["outcome"],
)
LAG = Gauge(
    "fmnist_backlog_messages", "Messages not yet classified: Kafka consumer lag or Pub/Sub backlog (NaN if unknown)"
)
STALLED = Gauge(
    "fmnist_stalled_partitions", "Assigned partitions with images waiting and none counted for FMNIST_STALL_SECONDS"
)

# Drift (:mod:`.core.drift`), set at scrape time from the ``/drift/`` document, for the versions
# serving now (live, shadow): series of versions no longer serving are dropped.
DRIFT_PSI = Gauge(
    "fmnist_drift_psi",
    "PSI of the newest window with enough images against the model's test-split reference, per signal",
    ["signal", "model_version", "role"],
)
DRIFT_WINDOW_IMAGES = Gauge(
    "fmnist_drift_window_images", "Images in the window fmnist_drift_psi is of", ["model_version", "role"]
)
DRIFT_REFERENCE = Gauge(
    "fmnist_drift_reference", "1 if the model's manifest holds a drift reference, else 0", ["model_version", "role"]
)
DRIFT_GAUGES = (DRIFT_PSI, DRIFT_WINDOW_IMAGES, DRIFT_REFERENCE)

BACKLOG_KINDS = ("kafka_lag", "pubsub_backlog")
RATE_WINDOW_S = 10.0


class RateMeter:
    """Events per second over a sliding window; thread-safe."""

    def __init__(self, window_s: float = RATE_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._started = clock()
        self._events: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        now = self._clock()
        with self._lock:
            self._events.append((now, count))
            self._forget_before(now - self.window_s)  # bounded even when nobody asks for the rate

    def _forget_before(self, cutoff: float) -> None:
        while self._events and self._events[0][0] < cutoff:
            self._events.popleft()

    def rate(self) -> float:
        """Mean rate over the window (over the uptime while that is shorter, at least 1 s)."""
        now = self._clock()
        with self._lock:
            self._forget_before(now - self.window_s)
            total = sum(count for _, count in self._events)
        return total / min(self.window_s, max(now - self._started, 1.0))

    @property
    def uptime_s(self) -> float:
        return self._clock() - self._started


IMAGE_RATE = RateMeter()


def observe_batch(counted: BatchResult, duplicates: int) -> None:
    """Count one batch in the Prometheus metrics and the images/s meter: ``counted`` is the
    part that counts (:meth:`BatchResult.without`), ``duplicates`` how many were left out."""
    DUPLICATES.inc(duplicates)
    result = counted
    BATCH_SIZE.observe(len(result.outcomes) + duplicates)
    latencies: list[float] = []
    classified = 0
    for outcome in result.outcomes:
        if isinstance(outcome, InvalidMessage):
            REJECTED.labels(outcome.kind).inc()
        else:
            classified += 1
            if outcome.latency_ms is not None:
                latencies.append(outcome.latency_ms / 1000.0)
    observe_many(LATENCY_SECONDS, latencies)
    IMAGES.inc(classified)
    IMAGE_RATE.add(classified)


def observe_many(histogram: Histogram, values: list[float]) -> None:
    """``histogram.observe(v)`` for every ``v``, with one increment per bucket touched rather than
    two locked increments per value (a batch's latencies). Works on the fields ``observe``
    itself updates in prometheus_client (``_upper_bounds``, ``_buckets``, ``_sum``); the same
    bucket is chosen: the first bound ``>= v``."""
    if not values:
        return
    histogram._raise_if_not_observable()
    histogram._sum.inc(sum(values))
    bounds = histogram._upper_bounds
    for index, count in collections.Counter(bisect_left(bounds, value) for value in values).items():
        histogram._buckets[index].inc(count)


def set_label_gauges(report: dict[str, Any]) -> None:
    """The delayed-label gauges from an ``/accuracy/`` document."""
    AWAITING_LABEL.set(report["awaiting_label"])
    LABEL_EXPIRED.set(report["label_expired"])
    for outcome in (*LABEL_OUTCOMES, "rejected"):
        LABELS.labels(outcome).set(report["labels"][outcome])


def stats_report(lag: int | None, backlog_kind: str, stalled: list[int] | None = None) -> dict[str, Any]:
    """The ``GET /stats/`` document (same keys on the worker and the bridge)::

        {"images_per_second": float,  # images classified per second over the last rate_window_s
         "rate_window_s": float,      # 10.0
         "lag": int | null,           # messages waiting to be classified; null when unknown
         "backlog_kind": "kafka_lag" | "pubsub_backlog",
         "uptime_s": float,           # seconds since this process started
         "stalled_partitions": [int]} # Kafka partitions with images waiting and none counted
                                      # for FMNIST_STALL_SECONDS (always [] on the bridge)

    ``kafka_lag`` sums, over the images partitions assigned to this worker, the highwater
    minus the next offset to classify; ``pubsub_backlog`` is the images subscription's
    undelivered-message count. Also sets the lag gauge.
    """
    if backlog_kind not in BACKLOG_KINDS:
        raise ValueError(f"backlog_kind {backlog_kind!r} is not one of {BACKLOG_KINDS}")
    LAG.set(float("nan") if lag is None else lag)
    return {
        "images_per_second": round(IMAGE_RATE.rate(), 3),
        "rate_window_s": IMAGE_RATE.window_s,
        "lag": lag,
        "backlog_kind": backlog_kind,
        "uptime_s": round(IMAGE_RATE.uptime_s, 3),
        "stalled_partitions": sorted(stalled or []),
    }


_scrape_lock = threading.Lock()  # the drift gauges are cleared and set again per scrape


def exposition(report: dict[str, Any], lag: int | None, drift: dict[str, Any] | None = None) -> tuple[bytes, str]:
    """``GET /metrics`` body and content type; ``report`` is the ``/accuracy/`` document and
    ``drift`` the ``/drift/`` one.

    The accuracy, label, lag and drift gauges are set here, at scrape time, from the caller's totals.
    """
    accuracy = report.get("accuracy")
    with _scrape_lock:
        ACCURACY.set(float("nan") if accuracy is None else accuracy)
        set_label_gauges(report)
        LAG.set(float("nan") if lag is None else lag)
        set_drift(drift)
        return generate_latest(), CONTENT_TYPE_LATEST


def set_drift(drift: dict[str, Any] | None) -> None:
    """The drift gauges of the serving versions in a ``/drift/`` document."""
    for gauge in DRIFT_GAUGES:
        gauge.clear()
    for version, part in ((drift or {}).get("models") or {}).items():
        role = part["role"]
        if role not in ("live", "shadow"):
            continue
        DRIFT_REFERENCE.labels(version, role).set(1 if part["reference_images"] else 0)
        latest = part["latest"]
        if latest is None:
            continue
        DRIFT_WINDOW_IMAGES.labels(version, role).set(latest["images"])
        for signal, value in latest["psi"].items():
            DRIFT_PSI.labels(signal, version, role).set(value)
