"""The bench stages. Each takes the run's :class:`Context` and returns a JSON-able dict.

Every stage uses its own app ids / topic names, all prefixed with the run's unique tag,
so a run never touches another engineer's topics and cleans up after itself.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmnist_faust import WORKER_LOOP
from fmnist_faust.config import Settings, load_settings, run_names
from fmnist_faust.core import dataset
from fmnist_faust.core.contract import encode_image
from fmnist_faust.core.model import Classifier, load_classifier
from fmnist_faust.core.pipeline import RawMessage, classify_batch

from .common import (
    ROOT,
    LiveConsumer,
    Sent,
    ServiceProc,
    cpu_seconds,
    create_topics,
    env_with,
    free_port,
    local_broker_pid,
    machine_cpu_seconds,
    percentiles,
    produce,
    read_records,
    span_rate,
    wait_until,
)

CODE_DEFAULTS = load_settings({})  # the defaults a user gets (batch size, linger, ...)
PROBE_MODES = ("noop", "forward")


@dataclass
class Plan:
    """How much each stage does (full run vs. smoke)."""

    ceiling_images: int = 10_000
    ceiling_repeats: int = 5
    single_images: int = 1_000
    naive_images: int = 5_000
    e2e_images: int = 50_000
    batch_sweep: tuple[int, ...] = (100, 250, 500, 1000, 2000)
    # (offered images/s, seconds): the p99 curve of the latency run
    rates: tuple[tuple[int, float], ...] = ((500, 5.0), (1000, 10.0), (2000, 5.0), (5000, 5.0), (10000, 3.0))
    # Images sent at 1,000/s before a latency run measures, so that it measures a worker past
    # its start. 500 were enough while batches held ~100 events; since a backlog fills
    # batches (fmnist_faust/batching.py) the images queued during start-up go out as one
    # batch, the rate phase began right behind it, and its first ~250 ms (first sends,
    # first /accuracy/ reads) gave p99 74-174 ms (9 runs) against 27 ms (2 runs) after a
    # 2,000-image warm-up (the worker before that change: 33-46 ms after 500).
    warmup_images: int = 2_000
    concurrent_images: int = 50_000
    pubsub_images: int = 20_000
    probe_images: int = 20_000
    probe_modes: tuple[str, ...] = ("noop", "forward")
    per_record_images: int = 20_000
    per_record_rounds: int = 3
    per_record_loops: tuple[str, ...] = ("aio", "uvloop")
    per_record_latency_seconds: float = 10.0
    stream_sweep: tuple[int, ...] = (1, 2, 4, 8)  # BRIDGE_STREAMS values (the default is always run)
    two_workers_images: int = 50_000
    images_per_record: int = 500
    kafka_batched_images: int = 200_000
    bridge_batched_images: int = 100_000
    peers_images: int = 50_000
    peers_rounds: int = 3
    guarantee_images: int = 20_000  # per variant: one image per record, and in batch records
    guarantee_rounds: int = 3

    @classmethod
    def smoke(cls) -> Plan:
        return cls(
            ceiling_images=2_000,
            ceiling_repeats=1,
            single_images=50,
            naive_images=200,
            e2e_images=1_000,
            batch_sweep=(),
            rates=((1000, 0.5), (5000, 0.2)),
            warmup_images=50,
            concurrent_images=1_000,
            pubsub_images=500,
            probe_images=500,
            probe_modes=("noop",),
            # more than one batch: with one, every prediction has the same timestamp (no rate)
            per_record_images=2_000,
            per_record_rounds=1,
            per_record_loops=(WORKER_LOOP,),
            per_record_latency_seconds=0.5,
            stream_sweep=(),
            two_workers_images=1_000,
            images_per_record=100,
            kafka_batched_images=2_000,
            bridge_batched_images=5_000,
            peers_images=2_000,
            peers_rounds=1,
            guarantee_images=2_000,
            guarantee_rounds=1,
        )


@dataclass
class Context:
    """Everything the stages share: settings, unique tag, scratch dir, data, model."""

    settings: Settings
    plan: Plan
    model_path: Path
    run_dir: Path
    tag: str = field(default_factory=lambda: f"perf-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}")
    log: Callable[[str], None] = print
    _split: dataset.Split | None = None

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka.bootstrap_servers

    @property
    def split(self) -> dataset.Split:
        if self._split is None:
            self._split = dataset.load_split("test", self.settings.model.data_dir)
        return self._split

    def name(self, suffix: str) -> str:
        return f"{self.tag}-{suffix}"

    def kafka_producer(self, topic: str) -> Any:
        from fmnist_faust.client import MainManager

        return MainManager("kafka", self.settings).create_producer(topic)

    def produce_kafka(self, topic: str, count: int, prefix: str, rate: float = 0.0, per_record: int = 0) -> Sent:
        producer = self.kafka_producer(topic)
        try:
            return produce(producer, self.split.images, self.split.labels, count, prefix, rate, per_record=per_record)
        finally:
            producer.close()


# =========================================================================== 1. model ceiling


def _best_rate(run: Callable[[], int], repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        n = run()
        best = max(best, n / (time.perf_counter() - started))
    return best


def model_ceiling(ctx: Context) -> dict[str, Any]:
    """Batched predict, classify_batch (decode + predict) and single-image predict, per BLAS pin."""
    from threadpoolctl import threadpool_info, threadpool_limits

    classifier: Classifier = load_classifier(ctx.model_path)
    plan = ctx.plan
    images = ctx.split.images[: plan.ceiling_images]
    labels = ctx.split.labels[: plan.ceiling_images]
    now = time.time()
    messages = [
        RawMessage(encode_image(f"c-{i}", images[i], int(labels[i]), now), f"c-{i}".encode())
        for i in range(len(images))
    ]
    batch = CODE_DEFAULTS.pipeline.batch_size
    blas = [
        {k: lib.get(k) for k in ("internal_api", "num_threads", "filepath")}
        for lib in threadpool_info()
        if lib.get("user_api") == "blas"
    ]
    out: dict[str, Any] = {
        "images": len(images),
        "repeats": plan.ceiling_repeats,
        "batch_size": batch,
        "blas_libraries_default": blas,
        "by_blas_threads": {},
    }
    for threads in (1, 2):
        classifier.blas_threads = threads  # Classifier.predict pins BLAS itself (default 1)
        with threadpool_limits(limits=threads, user_api="blas"):
            classifier.predict(images[:batch])  # warm up
            whole = _best_rate(lambda: len(classifier.predict(images)[0]), plan.ceiling_repeats)

            def in_batches() -> int:
                for i in range(0, len(images), batch):
                    classifier.predict(images[i : i + batch])
                return len(images)

            def pipeline_batches() -> int:
                for i in range(0, len(messages), batch):
                    classify_batch(classifier, messages[i : i + batch])
                return len(messages)

            def single() -> int:
                for i in range(plan.single_images):
                    classifier.predict(images[i : i + 1])
                return plan.single_images

            out["by_blas_threads"][str(threads)] = {
                "predict_whole_batch_per_s": round(whole),
                f"predict_batches_of_{batch}_per_s": round(_best_rate(in_batches, plan.ceiling_repeats)),
                f"classify_batch_of_{batch}_per_s": round(_best_rate(pipeline_batches, plan.ceiling_repeats)),
                "single_image_predict_per_s": round(_best_rate(single, max(1, plan.ceiling_repeats // 2))),
            }
    classifier.blas_threads = 1
    one = out["by_blas_threads"]["1"]
    out["blas_threads_pinned"] = 1
    out["images_per_s"] = one["predict_whole_batch_per_s"]
    out["classify_batch_per_s"] = one[f"classify_batch_of_{batch}_per_s"]
    out["single_image_per_s"] = one["single_image_predict_per_s"]
    return out


# =========================================================================== 2. naive baseline


def naive_baseline(ctx: Context) -> dict[str, Any]:
    """The per-message agent over a pre-loaded topic: rate from its predictions' timestamps."""
    n = ctx.plan.naive_images
    topic_in, topic_out = ctx.name("naive-images"), ctx.name("naive-predictions")
    create_topics(ctx.bootstrap, [topic_in, topic_out], ctx.settings.kafka.partitions)
    ctx.produce_kafka(topic_in, n, "naive")
    port = free_port()
    env = env_with(
        BENCH_NAIVE_APP_ID=ctx.name("naive"),
        BENCH_NAIVE_IN=topic_in,
        BENCH_NAIVE_OUT=topic_out,
        BENCH_NAIVE_WEB_PORT=str(port),
        BENCH_NAIVE_DATADIR=str(ctx.run_dir / "naive"),
        FMNIST_MODEL_PATH=str(ctx.model_path),
    )
    worker = ServiceProc.faust("bench.naive_app", env, ctx.run_dir / "naive.log", port, "/count/").start()
    try:
        done = wait_until(lambda: worker.get("/count/")["count"] >= n, timeout=60 + n / 50, interval=0.2)
        worker.sample_rss()
    finally:
        worker.stop()
    if done is None:
        raise RuntimeError(f"naive agent did not finish {n} images; log {worker.log_path}")
    records = read_records(ctx.bootstrap, topic_out, n)
    return {
        "images": n,
        "images_per_s": round(span_rate([r.timestamp_ms for r in records])),
        "predictions_read": len(records),
        "ready_s": worker.ready_s,
        "peak_rss_mb": worker.peak_rss_mb,
    }


# =========================================================================== 3. Kafka end to end


def _worker_env(ctx: Context, name: str, images_topic: str, batch: int, linger: float) -> dict[str, str]:
    return env_with(
        FMNIST_APP_ID=ctx.name(name),
        FMNIST_IMAGES_TOPIC=images_topic,
        FMNIST_PREDICTIONS_TOPIC=ctx.name(f"{name}-predictions"),
        FMNIST_DLQ_TOPIC=ctx.name(f"{name}-dlq"),
        FMNIST_WEB_PORT=str(free_port()),
        FMNIST_WORKER_DATADIR=str(ctx.run_dir / name),
        FMNIST_MODEL_PATH=str(ctx.model_path),
        FMNIST_BATCH_SIZE=str(batch),
        FMNIST_BATCH_LINGER=str(linger),
        FMNIST_LOG_LEVEL="warning",
    )


def _start_worker(ctx: Context, name: str, env: dict[str, str], loop: str | None = None) -> ServiceProc:
    return ServiceProc.faust(
        "fmnist_faust", env, ctx.run_dir / f"{name}.log", int(env["FMNIST_WEB_PORT"]), "/accuracy/", loop
    ).start()


def _wait_counted(worker: ServiceProc, count: int, timeout: float) -> float:
    """Poll /accuracy/ (every 0.1 s, to stay out of the worker's way) until ``count`` images."""
    done = wait_until(lambda: worker.get("/accuracy/")["images"] >= count, timeout, interval=0.1)
    if done is None:
        images = worker.get("/accuracy/")["images"]
        raise RuntimeError(f"worker counted {images}/{count} images in {timeout} s; log {worker.log_path}")
    return time.time()


def _drain(worker: ServiceProc, n: int, poll_s: float = 0.1) -> tuple[float, float, int]:
    """Wait until the worker counted ``n`` images (polling /accuracy/ every ``poll_s``): (wall
    time then, CPU s since its first counted batch, images counted at that first observation)."""
    seen_first: list[tuple[int, float]] = []

    def all_counted() -> bool:
        images = worker.get("/accuracy/")["images"]
        if images and not seen_first:
            seen_first.append((images, worker.cpu_seconds() or 0.0))
        return images >= n

    if wait_until(all_counted, timeout=60 + n / 200, interval=poll_s) is None:
        raise RuntimeError(f"worker did not count {n} images; log {worker.log_path}")
    counted_at = time.time()
    return counted_at, (worker.cpu_seconds() or 0.0) - seen_first[0][1], seen_first[0][0]


def _preloaded_stats(
    stamps: list[int],
    n: int,
    drained: tuple[float, float, int],
    spawned: float,
    worker: ServiceProc,
    batch: int,
    linger: float,
) -> dict[str, Any]:
    counted_at, cpu_used, first_images = drained
    first = min(stamps) / 1000.0
    return {
        "batch_size": batch,
        "linger_s": linger,
        "images": n,
        "predictions_read": len(stamps),
        "images_per_s": round(span_rate(stamps)),
        "table_confirmed_images_per_s": round(n / max(counted_at - first, 1e-3)),
        # None when not measured: the worker had counted them all by its first answer, or the
        # rest took less CPU than one clock tick of /proc (10 ms; a tiny smoke run)
        "worker_cpu_ms_per_image": (
            round(cpu_used * 1000.0 / (n - first_images), 4) if n > first_images and cpu_used > 0 else None
        ),
        "first_prediction_s_from_spawn": round(first - spawned, 2),
        "seconds_to_all_counted_from_spawn": round(counted_at - spawned, 2),
        "ready_s": worker.ready_s,
        "peak_rss_mb": worker.peak_rss_mb,
    }


def preloaded_run(
    ctx: Context,
    topic: str,
    n: int,
    batch: int,
    linger: float,
    name: str,
    loop: str | None = None,
    poll_s: float = 0.1,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Start a worker on a topic already holding ``n`` images; time until all are counted.

    Also its CPU time per image (user + system, all threads, from the first counted batch
    to the last, so the one-off model load is left out): less sensitive than wall-clock
    rates to what else runs on the machine. ``loop``: Faust's ``-L`` (None: the worker's default);
    ``poll_s``: how often /accuracy/ is asked (the rate comes from the predictions' timestamps);
    ``extra_env``: more of the worker's variables.
    """
    env = _worker_env(ctx, name, topic, batch, linger) | (extra_env or {})
    spawned = time.time()
    worker = _start_worker(ctx, name, env, loop)
    try:
        drained = _drain(worker, n, poll_s)
        worker.sample_rss()
    finally:
        worker.stop()
    records = read_records(ctx.bootstrap, env["FMNIST_PREDICTIONS_TOPIC"], n)
    return _preloaded_stats([r.timestamp_ms for r in records], n, drained, spawned, worker, batch, linger)


def start_probe(ctx: Context, topic: str, mode: str, loop: str | None, name: str) -> ServiceProc:
    """Start bench/probe_app.py in ``mode`` on ``topic`` (own app id, output topic, port)."""
    port = free_port()
    env = env_with(
        BENCH_PROBE_MODE=mode,
        BENCH_PROBE_APP_ID=ctx.name(name),
        BENCH_PROBE_IN=topic,
        BENCH_PROBE_OUT=ctx.name(f"{name}-out"),
        BENCH_PROBE_WEB_PORT=str(port),
        BENCH_PROBE_DATADIR=str(ctx.run_dir / name),
        FMNIST_BATCH_SIZE=str(CODE_DEFAULTS.pipeline.batch_size),
        FMNIST_BATCH_LINGER=str(CODE_DEFAULTS.pipeline.batch_linger_s),
    )
    return ServiceProc.faust("bench.probe_app", env, ctx.run_dir / f"{name}.log", port, "/count/", loop).start()


def probe_run(ctx: Context, topic: str, n: int, mode: str, loop: str | None = None, name: str = "") -> dict[str, Any]:
    """A diagnostic Faust app (bench/probe_app.py) over the pre-loaded topic: rate and CPU/image.

    ``loop``: Faust's ``-L`` (None: asyncio's default loop); ``name`` tells repeated runs apart."""
    worker = start_probe(ctx, topic, mode, loop, name or f"probe-{mode}")
    first: list[tuple[float, int, float]] = []
    ready = (time.perf_counter(), 0, worker.cpu_seconds() or 0.0)

    def done() -> bool:
        count = worker.get("/count/")["count"]
        if count and not first:
            first.append((time.perf_counter(), count, worker.cpu_seconds() or 0.0))
        return count >= n

    try:
        finished = wait_until(done, timeout=60 + n / 200, interval=0.05)
        cpu = worker.cpu_seconds() or 0.0
        worker.sample_rss()
    finally:
        worker.stop()
    if finished is None or not first:
        raise RuntimeError(f"probe {mode} did not reach {n} events; log {worker.log_path}")
    # From the first count seen (startup excluded), or from readiness when the probe had
    # already taken every event by then (a small smoke run on a fast machine)
    t0, c0, cpu0 = first[0] if first[0][1] < n else ready
    out = {
        "mode": mode,
        "images": n,
        "images_per_s": round((n - c0) / max(finished - t0, 1e-3)),
        "cpu_ms_per_image": round((cpu - cpu0) * 1000.0 / max(n - c0, 1), 4),
        "peak_rss_mb": worker.peak_rss_mb,
    }
    if mode == "forward":  # measured like the worker: from the sent records' timestamps
        out["images_per_s_polled"] = out["images_per_s"]
        sent = read_records(ctx.bootstrap, worker.env["BENCH_PROBE_OUT"], n)
        out["images_per_s"] = round(span_rate([r.timestamp_ms for r in sent]))
    return out


def raw_kafka_consume(ctx: Context, topic: str, n: int) -> dict[str, Any]:
    """aiokafka ``getmany`` of the pre-loaded topic in this process, no work: Kafka's client ceiling."""
    started = time.perf_counter()
    records = read_records(ctx.bootstrap, topic, n)
    seconds = time.perf_counter() - started
    return {"images": len(records), "images_per_s": round(len(records) / seconds)}


def _latencies(
    sent: Sent, by_id: dict[str, tuple[int, float | None]], arrivals: dict[str, float] | None
) -> dict[str, Any]:
    publish, worker_ms, observed = [], [], []
    for image_id, sent_at in sent.sent_at.items():
        hit = by_id.get(image_id)
        if hit is None:
            continue
        publish.append(hit[0] - sent_at * 1000.0)
        if hit[1] is not None:
            worker_ms.append(hit[1])
        if arrivals is not None and image_id in arrivals:
            observed.append((arrivals[image_id] - sent_at) * 1000.0)
    out = {
        "sent": len(sent.sent_at),
        "offered_per_s": round(sent.rate),
        "to_prediction_published_ms": percentiles(publish),
        "worker_latency_ms": percentiles(worker_ms),
    }
    if arrivals is not None:
        out["consumer_observed_ms"] = percentiles(observed)
    return out


def latency_run(
    ctx: Context,
    batch: int,
    linger: float,
    name: str,
    rates: tuple[tuple[int, float], ...],
    concurrent: int,
    live: bool,
    preloaded: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """A worker on an empty topic: cold start, fixed offered rates, then producer-concurrent saturation.

    With ``preloaded=(topic, n)`` (smoke runs: one worker start fewer) the worker starts on
    that topic instead and first drains its ``n`` images, reported under ``"preloaded"``
    like :func:`preloaded_run`.
    """
    topic = preloaded[0] if preloaded else ctx.name(f"{name}-images")
    env = _worker_env(ctx, name, topic, batch, linger)
    predictions = env["FMNIST_PREDICTIONS_TOPIC"]
    # The agent declares its predictions topic only once it runs: create it first, so the
    # live consumer can follow it from the start (the agent's declare is then a no-op).
    create_topics(ctx.bootstrap, [predictions] if preloaded else [topic, predictions], ctx.settings.kafka.partitions)
    spawned = time.time()
    worker = _start_worker(ctx, name, env)
    producer = None
    follower = None
    phases: dict[str, tuple[Sent, float, float]] = {}
    counted = 0
    drained: tuple[float, float, int] | None = None
    try:
        producer = ctx.kafka_producer(topic)
        follower = LiveConsumer(ctx.bootstrap, predictions) if live else None
        if preloaded:
            drained = _drain(worker, preloaded[1])
            counted = preloaded[1]
        plan = [("warmup", 1000, ctx.plan.warmup_images)] + [(f"rate_{r}", r, int(r * s)) for r, s in rates]
        if concurrent:
            plan.append(("saturation", 0, concurrent))
        for phase, rate, count in plan:
            begun = time.time()
            sent = produce(producer, ctx.split.images, ctx.split.labels, count, phase, rate)
            counted += count
            _wait_counted(worker, counted, timeout=60 + count / 500)
            phases[phase] = (sent, begun, time.time())
        worker.sample_rss()
    finally:
        arrivals_list = follower.stop() if follower else []
        if producer is not None:
            producer.close()
        worker.stop()
    records = read_records(ctx.bootstrap, predictions, counted)
    by_id: dict[str, tuple[int, float | None]] = {}
    for record in records:
        body = json.loads(record.value)
        by_id[body["id"]] = (record.timestamp_ms, body.get("latency_ms"))
    arrivals = {k.decode(): t for k, t in arrivals_list if k is not None} if follower else None
    out: dict[str, Any] = {
        "batch_size": batch,
        "linger_s": linger,
        "ready_s": worker.ready_s,
        "peak_rss_mb": worker.peak_rss_mb,
        "predictions_read": len(records),
    }
    if preloaded and drained:
        stamps = [r.timestamp_ms for r in records if r.key is not None and r.key.startswith(b"pre-")]
        out["preloaded"] = _preloaded_stats(stamps, preloaded[1], drained, spawned, worker, batch, linger)
    for phase, (sent, _, _) in phases.items():
        if phase == "warmup":
            continue
        out[phase] = _latencies(sent, by_id, arrivals)
        stamps = [by_id[i][0] for i in sent.sent_at if i in by_id]
        out[phase]["images_per_s"] = round(span_rate(stamps))  # predictions' rate in this phase
        if phase == "saturation":
            out[phase]["producer_per_s"] = round(sent.rate)
    return out


def kafka_e2e(ctx: Context) -> dict[str, Any]:
    """Batch-size sweep on a pre-loaded topic, then the latency run (a p99 curve over offered rates)."""
    plan = ctx.plan
    default_batch, default_linger = CODE_DEFAULTS.pipeline.batch_size, CODE_DEFAULTS.pipeline.batch_linger_s
    topic = ctx.name("e2e-images")
    create_topics(ctx.bootstrap, [topic], ctx.settings.kafka.partitions)
    loaded = ctx.produce_kafka(topic, plan.e2e_images, "pre")
    ctx.log(f"  pre-loaded {plan.e2e_images} images at {loaded.rate:,.0f}/s")
    sweep = []
    for batch in sorted(set(plan.batch_sweep) | ({default_batch} if plan.batch_sweep else set())):
        row = preloaded_run(ctx, topic, plan.e2e_images, batch, default_linger, f"pre-b{batch}")
        ctx.log(
            f"  preloaded batch={batch}: {row['images_per_s']:,}/s (table {row['table_confirmed_images_per_s']:,}/s, "
            f"{row['worker_cpu_ms_per_image']} CPU ms/image)"
        )
        sweep.append(row)

    diagnostics: dict[str, Any] = {"aiokafka_consume": raw_kafka_consume(ctx, topic, plan.e2e_images)}
    for mode in plan.probe_modes:
        diagnostics[f"faust_{mode}"] = probe_run(ctx, topic, min(plan.e2e_images, plan.probe_images), mode)
        ctx.log(
            f"  faust probe {mode}: {diagnostics[f'faust_{mode}']['images_per_s']:,}/s, "
            f"{diagnostics[f'faust_{mode}']['cpu_ms_per_image']} CPU ms/image"
        )

    lat = latency_run(
        ctx,
        default_batch,
        default_linger,
        "lat",
        plan.rates,
        plan.concurrent_images,
        live=True,
        preloaded=None if sweep else (topic, plan.e2e_images),
    )
    if not sweep:  # smoke: the latency worker drained the pre-loaded topic first
        sweep.append(lat.pop("preloaded"))
    ctx.log(
        f"  latency run: saturation {lat['saturation']['images_per_s']:,}/s "
        f"(producer {lat['saturation']['producer_per_s']:,}/s)"
    )
    headline = next((r for r in sweep if r["batch_size"] == default_batch), sweep[0])
    best_batch = max(sweep, key=lambda r: r["images_per_s"])
    ready = [r["ready_s"] for r in sweep] + [lat["ready_s"]]
    return {
        "images": plan.e2e_images,
        "preload_producer_per_s": round(loaded.rate),
        "defaults": {"batch_size": default_batch, "linger_s": default_linger},
        "images_per_s": headline["images_per_s"],
        "table_confirmed_images_per_s": headline["table_confirmed_images_per_s"],
        "concurrent_images_per_s": lat["saturation"]["images_per_s"],
        "worker_cpu_ms_per_image": headline["worker_cpu_ms_per_image"],
        "first_prediction_s_from_spawn": headline["first_prediction_s_from_spawn"],
        "diagnostics": diagnostics,
        "batch_sweep": sweep,
        "best_batch_size": best_batch["batch_size"],
        "best_batch_images_per_s": best_batch["images_per_s"],
        "latency": lat,
        "ready_s_empty_changelog": lat["ready_s"],
        "ready_s_all_workers": {"min": min(ready), "median": statistics.median(ready), "max": max(ready)},
        "peak_rss_mb": max(r["peak_rss_mb"] or 0 for r in sweep + [lat]),
    }


def kafka_batched(ctx: Context) -> dict[str, Any]:
    """Stage 8: one worker (code defaults) on a topic pre-loaded with batch records of
    ``images_per_record`` images; the rate from the predictions' timestamps, as stage 3."""
    plan = ctx.plan
    n, images_per_record = plan.kafka_batched_images, plan.images_per_record
    topic = ctx.name("kb-images")
    create_topics(ctx.bootstrap, [topic], ctx.settings.kafka.partitions)
    loaded = ctx.produce_kafka(topic, n, "kb", per_record=images_per_record)
    ctx.log(f"  pre-loaded {n} images in records of {images_per_record} at {loaded.rate:,.0f} images/s")
    row = preloaded_run(ctx, topic, n, CODE_DEFAULTS.pipeline.batch_size, CODE_DEFAULTS.pipeline.batch_linger_s, "kb")
    ctx.log(f"  batched: {row['images_per_s']:,} images/s, {row['worker_cpu_ms_per_image']} CPU ms/image")
    return {"images_per_record": images_per_record, "preload_producer_per_s": round(loaded.rate), **row}


# =========================================================================== 3b. per record vs Faust


def per_record(ctx: Context) -> dict[str, Any]:
    """The worker against what Faust itself allows, on one pre-loaded topic in one run.

    Per event loop (Faust's ``-L``), rounds of: the worker, the ``noop`` probe (Faust's
    consume -> ``take_events`` path, no work) and the ``forward`` probe (plus one send per
    event and the acks awaited per batch, as the worker publishes). Each reader keeps its
    best round (the least disturbed by the rest of the machine); each round's worker/forward
    ratio is kept too, and their median. The headline compares the worker on its own loop (:data:`fmnist_faust.WORKER_LOOP`) with the probes on the same
    loop; then the p99 latency at 1,000 images/s offered, one image per record.
    """
    plan = ctx.plan
    n = plan.per_record_images
    batch, linger = CODE_DEFAULTS.pipeline.batch_size, CODE_DEFAULTS.pipeline.batch_linger_s
    topic = ctx.name("pr-images")
    create_topics(ctx.bootstrap, [topic], ctx.settings.kafka.partitions)
    loaded = ctx.produce_kafka(topic, n, "pr")
    ctx.log(f"  pre-loaded {n} images at {loaded.rate:,.0f}/s")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        loop: {reader: [] for reader in ("worker", *PROBE_MODES)} for loop in plan.per_record_loops
    }
    for round_ in range(plan.per_record_rounds):
        for loop in plan.per_record_loops:
            worker = preloaded_run(ctx, topic, n, batch, linger, f"pr-{loop}-{round_}", loop, poll_s=0.5)
            runs[loop]["worker"].append(worker | {"cpu_ms_per_image": worker["worker_cpu_ms_per_image"]})
            for mode in PROBE_MODES:
                runs[loop][mode].append(probe_run(ctx, topic, n, mode, loop, f"pr-{mode}-{loop}-{round_}"))
            ctx.log(
                f"  round {round_} {loop}: "
                + ", ".join(f"{reader} {rows[-1]['images_per_s']:,}/s" for reader, rows in runs[loop].items())
            )
    by_loop: dict[str, dict[str, Any]] = {}
    for loop, readers in runs.items():
        best = {reader: max(rows, key=lambda r: r["images_per_s"]) for reader, rows in readers.items()}
        by_loop[loop] = {
            "images_per_s": {reader: row["images_per_s"] for reader, row in best.items()},
            "cpu_ms_per_image": {reader: row["cpu_ms_per_image"] for reader, row in best.items()},
            "rounds_images_per_s": {reader: [r["images_per_s"] for r in rows] for reader, rows in readers.items()},
            "ratio_to_forward": _ratio(best["worker"]["images_per_s"], best["forward"]["images_per_s"]),
            "ratio_to_noop": _ratio(best["worker"]["images_per_s"], best["noop"]["images_per_s"]),
            # each round's worker over the forward probe run right after it: less luck than best of
            "round_ratios_to_forward": [
                _ratio(w["images_per_s"], f["images_per_s"]) for w, f in zip(readers["worker"], readers["forward"])
            ],
        }
        by_loop[loop]["median_round_ratio_to_forward"] = statistics.median(
            r or 0.0 for r in by_loop[loop]["round_ratios_to_forward"]
        )
    headline = by_loop[WORKER_LOOP] if WORKER_LOOP in by_loop else next(iter(by_loop.values()))
    lat = latency_run(ctx, batch, linger, "pr-lat", ((1000, plan.per_record_latency_seconds),), 0, live=False)
    out: dict[str, Any] = {
        "images": n,
        "rounds": plan.per_record_rounds,
        "batch_size": batch,
        "linger_s": linger,
        "worker_loop": WORKER_LOOP,
        "images_per_s": headline["images_per_s"],
        "cpu_ms_per_image": headline["cpu_ms_per_image"],
        "ratio_to_forward": headline["ratio_to_forward"],
        "median_round_ratio_to_forward": headline["median_round_ratio_to_forward"],
        "ratio_to_noop": headline["ratio_to_noop"],
        "by_loop": by_loop,
        "rate_1000": lat["rate_1000"],
        "p99_ms_at_1000": lat["rate_1000"]["to_prediction_published_ms"]["p99"],
    }
    if {"aio", "uvloop"} <= by_loop.keys():
        out["worker_uvloop_over_aio"] = _ratio(
            by_loop["uvloop"]["images_per_s"]["worker"], by_loop["aio"]["images_per_s"]["worker"]
        )
    return out


GUARANTEES = ("at_least_once", "exactly_once")


def guarantees(ctx: Context) -> dict[str, Any]:
    """The worker with ``FMNIST_PROCESSING_GUARANTEE`` at_least_once and exactly_once, in
    alternating rounds on the same pre-loaded topics (one image per record, and batch records
    of ``images_per_record``): each keeps its best round, and each round's exactly_once over
    the at_least_once run just before it is kept too, with their median (the machine is
    shared: only ratios within one run mean anything)."""
    plan = ctx.plan
    n, per = plan.guarantee_images, plan.images_per_record
    batch, linger = CODE_DEFAULTS.pipeline.batch_size, CODE_DEFAULTS.pipeline.batch_linger_s
    variants = {"per_record": (ctx.name("g-pr-images"), 0), "batch_records": (ctx.name("g-br-images"), per)}
    for topic, per_record in variants.values():
        create_topics(ctx.bootstrap, [topic], ctx.settings.kafka.partitions)
        ctx.produce_kafka(topic, n, topic[-12:], per_record=per_record)
    out: dict[str, Any] = {"images": n, "images_per_record": per, "rounds": plan.guarantee_rounds}
    for variant, (topic, _) in variants.items():
        runs: dict[str, list[dict[str, Any]]] = {g: [] for g in GUARANTEES}
        for round_ in range(plan.guarantee_rounds):
            for guarantee in GUARANTEES:
                row = preloaded_run(
                    ctx,
                    topic,
                    n,
                    batch,
                    linger,
                    f"g-{variant}-{guarantee}-{round_}",
                    poll_s=0.5,
                    extra_env={"FMNIST_PROCESSING_GUARANTEE": guarantee},
                )
                runs[guarantee].append(row)
            ctx.log(
                f"  {variant} round {round_}: "
                + ", ".join(f"{g} {rows[-1]['images_per_s']:,}/s" for g, rows in runs.items())
            )
        best = {g: max(rows, key=lambda r: r["images_per_s"]) for g, rows in runs.items()}
        ratios = [
            _ratio(e["images_per_s"], a["images_per_s"]) for a, e in zip(runs["at_least_once"], runs["exactly_once"])
        ]
        out[variant] = {
            "images_per_s": {g: row["images_per_s"] for g, row in best.items()},
            "cpu_ms_per_image": {g: row["worker_cpu_ms_per_image"] for g, row in best.items()},
            "rounds_images_per_s": {g: [r["images_per_s"] for r in rows] for g, rows in runs.items()},
            "exactly_once_over_at_least_once": _ratio(
                best["exactly_once"]["images_per_s"], best["at_least_once"]["images_per_s"]
            ),
            "round_ratios": ratios,
            "median_round_ratio": statistics.median(r or 0.0 for r in ratios),
        }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


# =========================================================================== 4/5. Pub/Sub


class _PubSub:
    """Admin + publishing on the emulator for one bench topic/subscription pair."""

    def __init__(self, ctx: Context, topic: str, subscription: str) -> None:
        from google.cloud import pubsub_v1

        self.ctx = ctx
        self.publisher = pubsub_v1.PublisherClient()
        self.subscriber = pubsub_v1.SubscriberClient()
        project = ctx.settings.pubsub.project
        self.topic = topic
        self.topic_path = self.publisher.topic_path(project, topic)
        self.sub_path = self.subscriber.subscription_path(project, subscription)

    def create(self, with_subscription: bool = True) -> None:
        self.publisher.create_topic(name=self.topic_path)
        if with_subscription:
            self.subscriber.create_subscription(name=self.sub_path, topic=self.topic_path, ack_deadline_seconds=60)

    def publish(self, count: int, prefix: str, per_record: int = 0) -> Sent:
        from fmnist_faust.client import MainManager

        producer = MainManager("pubsub", self.ctx.settings).create_producer(self.topic)
        try:
            return produce(producer, self.ctx.split.images, self.ctx.split.labels, count, prefix, per_record=per_record)
        finally:
            producer.close()

    def close(self) -> None:
        self.subscriber.close()


def pubsub_raw(ctx: Context) -> dict[str, Any]:
    """Streaming pull + ack of pre-published images with the bridge's flow control; no work."""
    return _raw_streaming_pull(ctx, "raw", ctx.plan.pubsub_images, streams=1)


def _raw_streaming_pull(ctx: Context, name: str, n: int, streams: int) -> dict[str, Any]:
    """``streams`` streaming pulls that only ack, sharing the bridge's flow control as the
    bridge divides it (:func:`pubsub_bridge.bridge.stream_flow_limits`)."""
    from google.cloud import pubsub_v1

    from pubsub_bridge.bridge import stream_flow_limits

    ps = _PubSub(ctx, ctx.name(name), ctx.name(f"{name}-sub"))
    ps.create()
    try:
        published = ps.publish(n, name)
        lock = threading.Lock()
        stamps: list[float] = []
        finished = threading.Event()

        def on_message(message: Any) -> None:
            message.ack()
            with lock:
                stamps.append(time.time())
                if len(stamps) >= n:
                    finished.set()

        limits = stream_flow_limits(ctx.settings.bridge.max_messages, ctx.settings.bridge.max_bytes, streams)
        futures = [
            ps.subscriber.subscribe(
                ps.sub_path,
                on_message,
                flow_control=pubsub_v1.types.FlowControl(max_messages=messages, max_bytes=size),
            )
            for messages, size in limits
        ]
        ok = finished.wait(60 + n / 200)
        for future in futures:
            future.cancel()
        for future in futures:
            try:
                future.result(timeout=30)
            except Exception:
                pass
        if not ok:
            raise RuntimeError(f"raw streaming pull ({streams} streams) received {len(stamps)}/{n} messages")
        return {
            "images": n,
            "streams": len(futures),
            "images_per_s": round(span_rate([int(t * 1000) for t in stamps])),
            "publish_per_s": round(published.rate),
            "received": len(stamps),
            "flow_control_max_messages": ctx.settings.bridge.max_messages,
        }
    finally:
        ps.close()


def bridge_available() -> str | None:
    """None if ``python -m pubsub_bridge`` exists, else why it cannot be measured."""
    if importlib.util.find_spec("pubsub_bridge.__main__") is None:
        return "not measured: bridge not available (no pubsub_bridge/__main__.py)"
    return None


def pubsub_bridge(ctx: Context) -> dict[str, Any]:
    """`python -m pubsub_bridge setup`, pre-publish, then `run` with the default
    ``BRIDGE_STREAMS``: time until /accuracy/ counts all."""
    reason = bridge_available()
    if reason:
        return {"available": False, "reason": reason}
    return _bridge_run(ctx, "br", ctx.plan.pubsub_images, CODE_DEFAULTS.bridge.streams)


def bridge_batched(ctx: Context) -> dict[str, Any]:
    """Stage 9: the bridge (default ``BRIDGE_STREAMS``) fed batch records of ``images_per_record`` images."""
    reason = bridge_available()
    if reason:
        return {"available": False, "reason": reason}
    plan = ctx.plan
    return _bridge_run(
        ctx, "bb", plan.bridge_batched_images, CODE_DEFAULTS.bridge.streams, per_record=plan.images_per_record
    )


def _bridge_run(ctx: Context, name: str, n: int, streams: int, per_record: int = 0) -> dict[str, Any]:
    """The bridge (its own process, as deployed) with ``streams`` pulls over ``n`` pre-published
    images (``per_record`` > 0: in batch records of that many).

    Rate: from the predictions' publish times (pulled back from the bridge's predictions
    subscription), like stage 4; also table-confirmed from ready to all counted, and the
    bridge's CPU (user + system, all threads) from its first counted batch to the last:
    ``cpu_cores_busy`` near 1.0 means the process itself, one interpreter, is the bound.
    """
    import subprocess
    import sys

    port = free_port()
    names = run_names(ctx.name(name))
    env = env_with(
        **names,
        BRIDGE_WEB_PORT=str(port),
        BRIDGE_STREAMS=str(streams),
        FMNIST_WEB_HOST="127.0.0.1",
        BRIDGE_STATE_PATH=str(ctx.run_dir / f"{name}-state.sqlite3"),
        FMNIST_MODEL_PATH=str(ctx.model_path),
        FMNIST_LOG_LEVEL="warning",
    )
    setup = subprocess.run(
        [sys.executable, "-m", "pubsub_bridge", "setup"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    if setup.returncode != 0:
        return {
            "available": False,
            "reason": f"not measured: bridge not available (`setup` exited {setup.returncode}: "
            f"{(setup.stderr or setup.stdout).strip()[-300:]})",
        }
    images = _PubSub(ctx, names["FMNIST_IMAGES_TOPIC"], names["PUBSUB_IMAGES_SUBSCRIPTION"])
    predictions = _PubSub(ctx, names["FMNIST_PREDICTIONS_TOPIC"], names["PUBSUB_PREDICTIONS_SUBSCRIPTION"])
    try:
        published = images.publish(n, name, per_record)
        bridge = ServiceProc(
            [sys.executable, "-m", "pubsub_bridge", "run"], env, ctx.run_dir / f"{name}.log", port, "/accuracy/"
        )
        first: list[tuple[float, int, float]] = []  # (time, images, CPU s) at the first count seen

        def all_counted() -> bool:
            counted = bridge.get("/accuracy/")["images"]
            if counted and not first:
                first.append((time.time(), counted, bridge.cpu_seconds() or 0.0))
            return counted >= n

        try:
            bridge.start()
            ready_at = time.time()
            done = wait_until(all_counted, 60 + n / 200, interval=0.1)
            counted_at, cpu_at_end = time.time(), bridge.cpu_seconds() or 0.0
            bridge.sample_rss()
        finally:
            bridge.stop()
        if done is None:
            raise RuntimeError(f"bridge did not count {n} images; log {bridge.log_path}")
        stamps = _pull_publish_times(predictions, n, timeout=60 + n / 2000)
        busy: dict[str, Any] = {"bridge_cpu_ms_per_image": None, "cpu_cores_busy": None}
        if first and first[0][1] < n:  # None when it had counted them all by its first answer
            t0, c0, cpu0 = first[0]
            busy = {
                "bridge_cpu_ms_per_image": round((cpu_at_end - cpu0) * 1000.0 / (n - c0), 4),
                "cpu_cores_busy": round((cpu_at_end - cpu0) / max(counted_at - t0, 1e-3), 2),
            }
        out: dict[str, Any] = {
            "available": True,
            "images": n,
            "streams": streams,
            "publish_per_s": round(published.rate),
            "images_per_s": round(span_rate(stamps)),
            "predictions_read": len(stamps),
            "table_confirmed_images_per_s": round(n / max(counted_at - ready_at, 1e-3)),
            **busy,
            "batch_size": CODE_DEFAULTS.pipeline.batch_size,
            "linger_s": CODE_DEFAULTS.pipeline.batch_linger_s,
            "ready_s": bridge.ready_s,
            "peak_rss_mb": bridge.peak_rss_mb,
        }
        if per_record:
            out["images_per_record"] = per_record
        return out
    finally:
        for ps in (images, predictions):
            ps.close()


def _pull_publish_times(ps: _PubSub, n: int, timeout: float = 60.0) -> list[int]:
    """Publish times (ms) of up to ``n`` messages pulled (and acked) from a subscription."""
    times: list[int] = []
    deadline = time.monotonic() + timeout
    while len(times) < n and time.monotonic() < deadline:
        response = ps.subscriber.pull(subscription=ps.sub_path, max_messages=1000, timeout=10)
        received = response.received_messages
        if not received:
            continue
        times += [int(m.message.publish_time.timestamp() * 1000) for m in received]
        ps.subscriber.acknowledge(subscription=ps.sub_path, ack_ids=[m.ack_id for m in received])
    return times


def delete_pubsub_tagged(settings: Settings, tag: str) -> int:
    """Remove this run's subscriptions and topics from the emulator; returns how many."""
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    project = f"projects/{settings.pubsub.project}"
    removed = 0
    with subscriber:
        for sub in list(subscriber.list_subscriptions(project=project)):
            if tag in sub.name.rsplit("/", 1)[-1]:
                subscriber.delete_subscription(subscription=sub.name)
                removed += 1
        for topic in list(publisher.list_topics(project=project)):
            if tag in topic.name.rsplit("/", 1)[-1]:
                publisher.delete_topic(topic=topic.name)
                removed += 1
    return removed


# =========================================================================== 6/7. scale-out


def bridge_multistream(ctx: Context) -> dict[str, Any]:
    """The bridge with ``BRIDGE_STREAMS`` pulls against one raw streaming pull, same run.

    The raw single stream is the emulator's per-stream ceiling (stage 4's measure, taken
    again here, just before, so the ratio is of neighbours in time); the raw pull with as
    many streams as the bridge shows what the emulator could hand over without work, so
    the gap between it and the bridge is the bridge's own cost. Also a sweep of stream
    counts (full runs), which is how the default was chosen.
    """
    reason = bridge_available()
    if reason:
        return {"available": False, "reason": reason}
    n, streams = ctx.plan.pubsub_images, CODE_DEFAULTS.bridge.streams
    raw_one = _raw_streaming_pull(ctx, "ms-raw1", n, streams=1)
    ctx.log(f"  raw streaming pull, 1 stream: {raw_one['images_per_s']:,}/s")
    raw_many = _raw_streaming_pull(ctx, f"ms-raw{streams}", n, streams=streams)
    ctx.log(f"  raw streaming pull, {streams} streams: {raw_many['images_per_s']:,}/s")
    sweep = []
    for count in sorted(set(ctx.plan.stream_sweep) | {streams}):
        row = _bridge_run(ctx, f"ms-br{count}", n, count)
        ctx.log(
            f"  bridge, {count} streams: {row['images_per_s']:,}/s "
            f"({row['bridge_cpu_ms_per_image']} CPU ms/image, {row['cpu_cores_busy']} cores busy)"
        )
        sweep.append(row)
    headline = next(r for r in sweep if r["streams"] == streams)
    single = next((r for r in sweep if r["streams"] == 1), None)
    return {
        "available": True,
        "images": n,
        "streams": streams,
        "images_per_s": headline["images_per_s"],
        "raw_single_stream_images_per_s": raw_one["images_per_s"],
        "ratio": round(headline["images_per_s"] / raw_one["images_per_s"], 3) if raw_one["images_per_s"] else None,
        "target_ratio": 1.5,
        f"raw_{streams}_streams_images_per_s": raw_many["images_per_s"],
        "bridge_single_stream_images_per_s": single["images_per_s"] if single else None,
        "bridge_cpu_ms_per_image": headline["bridge_cpu_ms_per_image"],
        "cpu_cores_busy": headline["cpu_cores_busy"],
        "sweep": sweep,
    }


def two_workers(ctx: Context) -> dict[str, Any]:
    """Two worker processes of one group against one, each draining the same pre-loaded topic.

    One topic with ``FMNIST_PARTITIONS`` (at least 2) partitions and ``n`` images; first one
    worker (its own group) drains it, then two workers (another group, started together)
    do. Rates from the predictions' timestamps, as in stage 3. What bounds the ratio is
    read from CPU time over each drain: each worker's, the local broker's (when
    ``tools/services.sh`` started it from this checkout) and the whole machine's (/proc/stat,
    so other work on the machine shows as ``machine_busy_cores`` above the parts).
    """
    n = ctx.plan.two_workers_images
    partitions = max(2, ctx.settings.kafka.partitions)
    topic = ctx.name("two-images")
    create_topics(ctx.bootstrap, [topic], partitions)
    loaded = ctx.produce_kafka(topic, n, "two")
    ctx.log(f"  pre-loaded {n} images on {partitions} partitions at {loaded.rate:,.0f}/s")
    one = _group_drain(ctx, topic, n, "two-w1", workers=1)
    ctx.log(f"  one worker: {one['images_per_s']:,}/s, CPU cores busy {one['cpu_cores_busy']}")
    two = _group_drain(ctx, topic, n, "two-w2", workers=2)
    ctx.log(f"  two workers: {two['images_per_s']:,}/s, CPU cores busy {two['cpu_cores_busy']}")
    return {
        "images": n,
        "partitions": partitions,
        "cpus": os.cpu_count(),
        "images_per_s": two["images_per_s"],
        "one_worker_images_per_s": one["images_per_s"],
        "ratio": round(two["images_per_s"] / one["images_per_s"], 3) if one["images_per_s"] else None,
        "all_busy_ratio": round(two["all_busy_images_per_s"] / one["all_busy_images_per_s"], 3)
        if two["all_busy_images_per_s"] and one["all_busy_images_per_s"]
        else None,
        "one_worker": one,
        "two_workers": two,
    }


def _group_drain(ctx: Context, topic: str, n: int, name: str, workers: int) -> dict[str, Any]:
    """``workers`` processes of one new group, started together, until /accuracy/ counts ``n``."""
    batch, linger = CODE_DEFAULTS.pipeline.batch_size, CODE_DEFAULTS.pipeline.batch_linger_s
    base = _worker_env(ctx, name, topic, batch, linger)
    procs = [
        ServiceProc.faust(
            "fmnist_faust",
            dict(base, FMNIST_WEB_PORT=str(port), FMNIST_WORKER_DATADIR=str(ctx.run_dir / f"{name}-{i}")),
            ctx.run_dir / f"{name}-{i}.log",
            port,
            "/accuracy/",
        )
        for i, port in enumerate(free_port() for _ in range(workers))
    ]
    broker = local_broker_pid()
    errors: list[BaseException] = []

    def start(proc: ServiceProc) -> None:
        try:
            proc.start()
        except BaseException as exc:  # reported below, after every start has ended
            errors.append(exc)

    starters = [threading.Thread(target=start, args=(proc,)) for proc in procs]
    for thread in starters:
        thread.start()
    first: list[tuple[float, int, list[float], float | None, float, tuple[float, float]]] = []

    def sample() -> tuple[list[float], float | None, float, tuple[float, float]]:
        """CPU seconds so far: each worker, the broker, this harness, the whole machine."""
        return (
            [proc.cpu_seconds() or 0.0 for proc in procs],
            cpu_seconds(broker) if broker else None,
            time.process_time(),
            machine_cpu_seconds(),
        )

    timeline: list[tuple[float, list[int]]] = []  # (time, images each worker classified so far)

    def all_counted() -> bool:
        counted = procs[0].get("/accuracy/")["images"]
        if counted and not first:
            first.append((time.time(), counted, *sample()))
        if counted:
            timeline.append((time.time(), [_images_total(proc) or 0 for proc in procs]))
        return counted >= n

    try:
        for thread in starters:
            thread.join()
        if errors:
            raise errors[0]
        done = wait_until(all_counted, timeout=60 + n / 200, interval=0.1)
        ended_at, (cpu_end, broker_end, harness_end, machine_end) = time.time(), sample()
        per_worker = [_images_total(proc) for proc in procs]
        for proc in procs:
            proc.sample_rss()
    finally:
        for proc in procs:
            proc.stop()
    if done is None:
        raise RuntimeError(f"{workers} worker(s) did not count {n} images; logs {[str(p.log_path) for p in procs]}")
    records = read_records(ctx.bootstrap, base["FMNIST_PREDICTIONS_TOPIC"], n)
    out: dict[str, Any] = {
        "workers": workers,
        "images_per_s": round(span_rate([r.timestamp_ms for r in records])),
        "predictions_read": len(records),
        "images_classified_by_worker": per_worker,
        "ready_s": [proc.ready_s for proc in procs],
        "cpu_cores_busy": None,
        **_drain_phases(timeline),
    }
    if first and first[0][1] < n:  # else every image was counted by the first answer (tiny smoke run)
        t0, c0, cpu0, broker0, harness0, machine0 = first[0]
        seconds = max(ended_at - t0, 1e-3)
        out.update(
            window_s=round(seconds, 2),
            window_images=n - c0,
            worker_cpu_cores_busy=[round((b - a) / seconds, 2) for a, b in zip(cpu0, cpu_end)],
            worker_cpu_ms_per_image=round((sum(cpu_end) - sum(cpu0)) * 1000.0 / (n - c0), 4),
            broker_cpu_cores_busy=round((broker_end - broker0) / seconds, 2)
            if broker0 is not None and broker_end is not None
            else None,
            harness_cores_busy=round((harness_end - harness0) / seconds, 2),
            machine_busy_cores=round((machine_end[0] - machine0[0]) / seconds, 2),
            cpu_cores_busy=round((sum(cpu_end) - sum(cpu0)) / seconds, 2),
        )
        if out["broker_cpu_cores_busy"] is not None:  # whatever else runs on the machine
            out["other_cores_busy"] = round(
                out["machine_busy_cores"]
                - out["cpu_cores_busy"]
                - out["broker_cpu_cores_busy"]
                - out["harness_cores_busy"],
                2,
            )
    return out


def _drain_phases(timeline: list[tuple[float, list[int]]]) -> dict[str, Any]:
    """Split a group's drain (polled per-worker totals) into: fewer workers busy than
    started (before the last one's first batch: joining, rebalancing), all busy (until
    the first one classified its last image), and the tail (the others finishing alone).
    ``all_busy_images_per_s`` is the group's rate while every worker had work."""
    if len(timeline) < 2:
        return {"all_busy_images_per_s": None}
    start, end = timeline[0][0], timeline[-1][0]
    workers = range(len(timeline[0][1]))
    joined = min((t for t, totals in timeline if all(totals)), default=end)
    finished = [min(t for t, totals in timeline if totals[w] == timeline[-1][1][w]) for w in workers]
    first_done = min(finished)

    def images_at(moment: float) -> int:
        return sum(next(totals for t, totals in timeline if t >= moment))

    busy_s = first_done - joined
    return {
        "before_all_busy_s": round(joined - start, 2),
        "all_busy_s": round(max(busy_s, 0.0), 2),
        "tail_s": round(end - first_done, 2) if len(finished) > 1 else 0.0,
        "all_busy_images_per_s": round((images_at(first_done) - images_at(joined)) / busy_s) if busy_s > 0.2 else None,
    }


def _images_total(worker: ServiceProc) -> int | None:
    """The worker's own ``fmnist_images_total`` (images it classified, not the group's)."""
    import urllib.request

    try:
        with urllib.request.urlopen(worker.url("/metrics"), timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("fmnist_images_total "):
            return int(float(line.split()[1]))
    return None


# =========================================================================== 10. peers


PEERS = ("bytewax", "quixstreams")


def peer_run(ctx: Context, topic: str, n: int, peer: str, name: str) -> dict[str, Any]:
    """One peer pipeline (bench/peers.py) over the pre-loaded topic: the rate from its
    predictions' timestamps (as the worker's), its CPU per image from its first batch, and
    its predicted class per id."""
    out_topic = ctx.name(f"{name}-out")
    create_topics(ctx.bootstrap, [out_topic], ctx.settings.kafka.partitions)
    argv = [sys.executable, "-m", "bench.peers", peer, "--bootstrap", ctx.bootstrap, "--topic", topic]
    argv += ["--out", out_topic, "--images", str(n), "--model", str(ctx.model_path), "--state-dir", str(ctx.run_dir)]
    log_path = ctx.run_dir / f"{name}.log"
    with log_path.open("w") as log:
        done = subprocess.run(argv, cwd=ROOT, env=env_with(), stdout=subprocess.PIPE, stderr=log, timeout=120 + n / 200)
    if done.returncode != 0:
        raise RuntimeError(f"peer {peer} exited with {done.returncode}; log {log_path}")
    report = json.loads(done.stdout.decode().strip().splitlines()[-1])
    records = read_records(ctx.bootstrap, out_topic, n)
    return {
        "images_per_s": round(span_rate([r.timestamp_ms for r in records])),
        "cpu_ms_per_image": round(report["cpu_s"] * 1000.0 / max(report["images"], 1), 4),
        "predicted": {json.loads(r.value)["id"]: json.loads(r.value)["predicted"] for r in records},
    }


def peers(ctx: Context) -> dict[str, Any]:
    """The worker (code defaults) against bytewax and quix-streams doing the same job
    (bench/peers.py), in rounds on one pre-loaded topic of one-image records, and
    ``classify_batch`` (decode + predict, in this process) on the same images as the ceiling.
    Every contender's predictions must equal offline ``predict`` on those images."""
    plan = ctx.plan
    n = plan.peers_images
    batch = CODE_DEFAULTS.pipeline.batch_size
    topic = ctx.name("peers-images")
    create_topics(ctx.bootstrap, [topic], ctx.settings.kafka.partitions)
    loaded = ctx.produce_kafka(topic, n, "pe")
    ctx.log(f"  pre-loaded {n} images at {loaded.rate:,.0f}/s")
    classifier = load_classifier(ctx.model_path)
    rows = [i % len(ctx.split.labels) for i in range(n)]
    offline = dict(zip((f"pe-{i:07d}" for i in range(n)), classifier.predict(ctx.split.images[rows])[0].tolist()))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ("worker", *PEERS)}
    for round_ in range(plan.peers_rounds):
        worker = preloaded_run(
            ctx, topic, n, batch, CODE_DEFAULTS.pipeline.batch_linger_s, f"pe-worker-{round_}", poll_s=0.5
        )
        runs["worker"].append(
            {"images_per_s": worker["images_per_s"], "cpu_ms_per_image": worker["worker_cpu_ms_per_image"]}
        )
        for peer in PEERS:
            row = peer_run(ctx, topic, n, peer, f"pe-{peer}-{round_}")
            if row.pop("predicted") != offline:
                raise RuntimeError(f"{peer}'s predictions differ from offline predict")
            runs[peer].append(row)
        ctx.log(f"  round {round_}: " + ", ".join(f"{k} {v[-1]['images_per_s']:,}/s" for k, v in runs.items()))
    messages = [
        RawMessage(encode_image(f"c-{i}", ctx.split.images[j], int(ctx.split.labels[j])), None)
        for i, j in enumerate(rows)
    ]

    def classify_all() -> int:
        for i in range(0, len(messages), batch):
            classify_batch(classifier, messages[i : i + batch])
        return len(messages)

    classify_rate = round(_best_rate(classify_all, 2))
    out: dict[str, Any] = {
        "images": n,
        "rounds": plan.peers_rounds,
        "batch_size": batch,
        "classify_batch_per_s": classify_rate,
    }
    for name, values in runs.items():
        rates = [r["images_per_s"] for r in values]
        cpus = [r["cpu_ms_per_image"] for r in values if r["cpu_ms_per_image"] is not None]
        out[name] = {
            "images_per_s": max(rates),
            "median_images_per_s": round(statistics.median(rates)),
            "rounds_images_per_s": rates,
            "cpu_ms_per_image": min(cpus) if cpus else None,
            "median_cpu_ms_per_image": round(statistics.median(cpus), 4) if cpus else None,
        }
    out["images_per_s"] = out["worker"]["images_per_s"]
    out["worker_over_bytewax"] = _ratio(out["worker"]["images_per_s"], out["bytewax"]["images_per_s"])
    out["worker_over_quixstreams"] = _ratio(out["worker"]["images_per_s"], out["quixstreams"]["images_per_s"])
    out["worker_over_classify_batch"] = _ratio(out["worker"]["images_per_s"], classify_rate)
    out["median_round_worker_over_bytewax"] = statistics.median(
        _ratio(w["images_per_s"], b["images_per_s"]) or 0.0 for w, b in zip(runs["worker"], runs["bytewax"])
    )
    return out
