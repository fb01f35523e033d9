"""``/metrics`` and ``/stats/``: the images/s meter, the lag arithmetic, and a real scrape.

The scrape test streams labelled images and malformed messages through a real worker
on Kafka and checks that every Prometheus counter equals what was sent.
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from fmnist_faust.client import MainManager
from fmnist_faust.config import load_settings
from fmnist_faust.core.contract import encode_image
from fmnist_faust.core.scores import Scores
from fmnist_faust.metrics import RateMeter, exposition, stats_report
from support import wait_until

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def test_observe_many_fills_the_buckets_observe_would() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from fmnist_faust.metrics import observe_many

    values = [0.0, 0.004, 0.005, 0.0051, 0.1, 0.1000001, 3.0, 11.0, float("inf"), 0.02, 0.02]
    registry = CollectorRegistry()
    one_by_one = Histogram("one", "", buckets=(0.005, 0.01, 0.1, 1, 10), registry=registry)
    batched = Histogram("many", "", buckets=(0.005, 0.01, 0.1, 1, 10), registry=registry)
    for value in values:
        one_by_one.observe(value)
    observe_many(batched, values[:4])
    observe_many(batched, values[4:])
    observe_many(batched, [])

    def samples(name: str) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name[len(name) :], s.labels, s.value)
            for metric in registry.collect()
            if metric.name == name
            for s in metric.samples
            if not s.name.endswith("_created")
        ]

    assert samples("one") == samples("many")


def test_rate_meter_averages_over_the_window() -> None:
    now = [100.0]
    meter = RateMeter(window_s=10.0, clock=lambda: now[0])
    assert meter.rate() == 0.0
    now[0] = 100.5
    meter.add(50)
    assert meter.rate() == 50.0  # uptime below 1 s counts as 1 s
    now[0] = 104.0
    meter.add(150)
    assert meter.rate() == 200 / 4.0  # uptime 4 s is shorter than the window
    now[0] = 112.0
    assert meter.rate() == 150 / 10.0  # the first add left the window
    now[0] = 114.5
    assert meter.rate() == 0.0 and meter.uptime_s == 14.5


def test_rate_meter_holds_one_window_even_if_never_read() -> None:
    now = [0.0]
    meter = RateMeter(window_s=10.0, clock=lambda: now[0])
    for second in range(10_000):  # a worker nobody polls for /stats/
        now[0] = float(second)
        meter.add(500)
    assert len(meter._events) == 11


def test_stats_report_shape() -> None:
    report = stats_report(7, "pubsub_backlog")
    assert set(report) == {
        "images_per_second",
        "rate_window_s",
        "lag",
        "backlog_kind",
        "uptime_s",
        "stalled_partitions",
    }
    assert report["stalled_partitions"] == []
    assert stats_report(0, "kafka_lag", [3, 1])["stalled_partitions"] == [1, 3]
    assert report["lag"] == 7 and report["backlog_kind"] == "pubsub_backlog"
    assert isinstance(report["images_per_second"], float) and report["uptime_s"] >= 0
    with pytest.raises(ValueError):
        stats_report(None, "kafka")


def test_label_gauges_in_the_exposition_are_the_accuracy_documents_counts() -> None:
    """The worker and the bridge both export ``/metrics`` through :func:`exposition` with their
    ``/accuracy/`` document, so the label series have the same names and values on both."""
    scores = Scores()
    scores.record([3, None, None, None], [3, 1, 2, 5], [0.0] * 4, 10)
    scores.join(label=1, predicted=1, at=5.0, window_seconds=10)
    scores.expire_waiting(1)
    for outcome, count in {"joined": 1, "awaiting_image": 2, "expired": 4, "repeated": 3, "late": 1}.items():
        scores.count_labels(outcome, count)
    scores.reject_label("bad_label", 2)
    scores.reject_label("not_json")
    report = scores.report("v1")

    body, _ = exposition(report, 0)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("fmnist_awaiting_label", ())] == report["awaiting_label"] == 1
    assert samples[("fmnist_label_expired", ())] == report["label_expired"] == 1
    by_outcome = {labels[0][1]: value for (name, labels), value in samples.items() if name == "fmnist_labels"}
    assert by_outcome == {"joined": 1, "awaiting_image": 2, "expired": 4, "repeated": 3, "late": 1, "rejected": 3}
    assert samples[("fmnist_accuracy", ())] == pytest.approx(report["accuracy"]) == 1.0


class FakeConsumer:
    """Just what :func:`agents.partition_lags` asks of Faust's consumer."""

    def __init__(self, highwaters: dict[Any, int | None]) -> None:
        self.highwaters = highwaters

    def assignment(self) -> set[Any]:
        return set(self.highwaters)

    def highwater(self, tp: Any) -> int | None:
        return self.highwaters[tp]


def test_consumer_lag_is_highwater_minus_next_unapplied_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    from faust.types import TP

    from fmnist_faust import agents, views

    applied = {0: 99}  # the score table row of partition 0 covers offsets 0..99
    monkeypatch.setattr(agents, "row_offset", lambda partition: applied.get(partition, -1))
    images = views.images_topic.get_topic_name()
    consumer = FakeConsumer({TP(images, 0): 110, TP(images, 1): 5, TP("scores-changelog", 0): 1000})
    monkeypatch.setattr(views.app, "consumer", consumer)
    assert agents.partition_lags() == {0: 10, 1: 5}  # partition 1 has no row yet: all 5 wait
    assert views.consumer_lag() == 10 + 5

    consumer.highwaters = {TP(images, 0): None}
    assert views.consumer_lag() is None  # assigned but not fetched yet
    consumer.highwaters = {}
    assert views.consumer_lag() == 0  # nothing assigned to this worker


def scrape(url: str) -> dict[SampleKey, float]:
    """Every sample of a Prometheus text exposition, keyed by (name, sorted labels)."""
    response = requests.get(url + "/metrics", timeout=5)
    response.raise_for_status()
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


@pytest.mark.kafka
def test_metrics_scrape_counts_what_was_sent(start_worker: Callable, worker_env: dict[str, str], test_split) -> None:
    worker = start_worker()
    assert scrape(worker.url)[("fmnist_images_total", ())] == 0

    sent = 600
    now = time.time()
    items = [
        (encode_image(f"m-{i}", test_split.images[i], int(test_split.labels[i]), sent_at=now), f"m-{i}")
        for i in range(sent)
    ]
    short = base64.b64encode(bytes(10)).decode()
    bad = [
        (b"{not json", "junk-1"),
        (b"[1, 2]", "junk-2"),
        (json.dumps({"id": "s", "pixels": short}).encode(), "s"),
        (json.dumps({"id": "t", "pixels": short}).encode(), "t"),
    ]
    expected_rejects = Counter({"not_json": 1, "not_object": 1, "bad_pixel_count": 2})
    with MainManager("kafka", load_settings(worker_env)).create_producer(worker_env["FMNIST_IMAGES_TOPIC"]) as producer:
        producer.produce_many(items + bad)

    report = wait_until(
        lambda: (r := worker.accuracy())["images"] + r["rejected"] == sent + len(bad) and r,
        60,
        what="the worker to count every message",
    )
    assert report["images"] == sent and report["rejected_by_kind"] == dict(sorted(expected_rejects.items()))
    stats = wait_until(
        lambda: (s := requests.get(worker.url + "/stats/", timeout=5).json())["lag"] == 0 and s,
        15,
        what="the consumer lag to reach 0",
    )
    assert stats["backlog_kind"] == "kafka_lag" and stats["images_per_second"] > 0

    samples = scrape(worker.url)
    assert samples[("fmnist_images_total", ())] == sent
    for kind, count in expected_rejects.items():
        assert samples[("fmnist_rejected_total", (("kind", kind),))] == count
    assert samples[("fmnist_batch_size_sum", ())] == sent + len(bad)
    batches = samples[("fmnist_batch_size_count", ())]
    assert 1 <= batches == samples[("fmnist_predict_seconds_count", ())]
    assert samples[("fmnist_end_to_end_latency_seconds_count", ())] == sent
    assert samples[("fmnist_end_to_end_latency_seconds_bucket", (("le", "+Inf"),))] == sent
    assert samples[("fmnist_accuracy", ())] == pytest.approx(report["accuracy"])
    assert samples[("fmnist_backlog_messages", ())] == 0
