"""`make bench` / `make bench-smoke`: every stage in one run, on the same broker and emulator.

    python -m bench.run            # full run -> bench/results/latest.{json,md,png}
    python -m bench.run --smoke    # seconds; same stages, tiny counts -> .run/bench/smoke/
    python -m bench.run --out DIR --stages ceiling,naive,kafka,per_record,pubsub,bridge,bridge_multistream,two_workers,kafka_batched,bridge_batched

Needs KAFKA_BOOTSTRAP_SERVERS and PUBSUB_EMULATOR_HOST (``tools/bench.sh`` sources
``.services.env``). Stages: (1) model ceiling, (2) naive per-message agent, (3) the
fmnist-faust worker end to end, (3b) ``per_record``: the worker against Faust's own
``noop`` / ``forward`` probes on one pre-loaded topic, per event loop, and its p99 at 1,000
images/s, (4) raw Pub/Sub streaming pull, (5) the Pub/Sub bridge, (6) the bridge's several
streams against one raw stream (``bridge_multistream``), (7) two Kafka workers against one
(``two_workers``), (8) the worker and (9) the bridge fed batch records (``kafka_batched``,
``bridge_batched``), (10) the worker against bytewax and quix-streams doing the same job
(``peers``); peak RSS and cold start of the worker / bridge.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fmnist_faust.config import ModelSettings, load_settings
from fmnist_faust.core import model

from . import report, stages
from .common import ROOT, delete_topics_with_prefix

ALL_STAGES = (
    "ceiling",
    "naive",
    "kafka",
    "per_record",
    "pubsub",
    "bridge",
    "bridge_multistream",
    "two_workers",
    "kafka_batched",
    "bridge_batched",
    "peers",
    "guarantees",
)
TARGETS = {
    "kafka_images_per_s": 20_000,
    "kafka_batched_images_per_s": 20_000,
    "bridge_batched_images_per_s": 10_000,
    "kafka_over_naive": 20,
    "p99_ms_at_1000": 50,
    "p99_ms_at_5000": 100,
    "worker_over_bytewax": 1.2,
    "worker_cpu_ms_per_image": 0.05,
    "worker_over_classify_batch": 0.6,
    "two_workers_over_one": 1.7,
    "per_record_ratio_to_forward": 0.75,
    "bridge_over_raw": 0.9,
    "bridge_multistream_over_raw_single_stream": 1.5,
    "worker_rss_mb": 400,
    "worker_ready_s": 15,
    "exactly_once_over_at_least_once": 0.9,
}


def ensure_model(models: ModelSettings, run_dir: Path, smoke: bool, log: Callable[[str], None]) -> Path:
    """The verified model at FMNIST_MODEL_PATH; in smoke mode a tiny one is trained if it is missing."""
    try:
        model.verify(models.path)
        return models.path
    except model.ModelError as reason:
        if not smoke:
            raise SystemExit(f"bench: {reason}. Run `make model` first.") from None

        path = run_dir / "tiny-model" / "tiny.joblib"
        try:
            model.verify(path)
            return path
        except model.ModelError:
            pass
        log(f"smoke: no verified model ({reason}); training a tiny one at {path}")
        return model.train_small(path, models.data_dir)


def machine() -> dict[str, Any]:
    """What the numbers were measured on, including how busy the machine was."""
    load = os.getloadavg()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", "fmnist_faust", "pubsub_bridge"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in load],
        "git_commit": commit.stdout.strip() or None,
        "uncommitted_code": sorted(line[3:] for line in dirty.stdout.splitlines() if line.strip()),
    }


def ratios(results: dict[str, Any]) -> dict[str, float | None]:
    def rate(stage: str, key: str = "images_per_s") -> float | None:
        value = results.get(stage, {}).get(key)
        return float(value) if isinstance(value, (int, float)) and value > 0 else None

    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    return {
        "kafka_over_naive": div(rate("kafka"), rate("naive")),
        "kafka_over_ceiling": div(rate("kafka"), rate("ceiling")),
        "kafka_over_classify_batch": div(rate("kafka"), rate("ceiling", "classify_batch_per_s")),
        "bridge_over_raw": div(rate("bridge"), rate("pubsub")),
        "bridge_multistream_over_raw_single_stream": div(
            rate("bridge_multistream"), rate("bridge_multistream", "raw_single_stream_images_per_s")
        ),
        "two_workers_over_one": div(rate("two_workers"), rate("two_workers", "one_worker_images_per_s")),
        "kafka_batched_over_kafka": div(rate("kafka_batched"), rate("kafka")),
        "bridge_batched_over_bridge": div(rate("bridge_batched"), rate("bridge")),
    }


def targets(results: dict[str, Any], ratio: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    kafka = results.get("kafka", {})
    bridge = results.get("bridge", {})
    per_record = results.get("per_record", {})

    peers = results.get("peers", {})

    def p99_at(rate: int) -> float | None:
        try:
            return kafka["latency"][f"rate_{rate}"]["to_prediction_published_ms"]["p99"]
        except (KeyError, TypeError):
            return None

    def check(value: Any, target: float, higher_is_better: bool) -> dict[str, Any]:
        if value is None:
            return {"value": None, "target": target, "met": None}
        met = value >= target if higher_is_better else value <= target
        return {"value": value, "target": target, "met": bool(met)}

    return {
        "kafka_images_per_s": check(kafka.get("images_per_s"), TARGETS["kafka_images_per_s"], True),
        "kafka_over_naive": check(ratio["kafka_over_naive"], TARGETS["kafka_over_naive"], True),
        "p99_ms_at_1000": check(p99_at(1000), TARGETS["p99_ms_at_1000"], False),
        "p99_ms_at_5000": check(p99_at(5000), TARGETS["p99_ms_at_5000"], False),
        "worker_over_bytewax": check(peers.get("worker_over_bytewax"), TARGETS["worker_over_bytewax"], True),
        "worker_cpu_ms_per_image": check(
            peers.get("worker", {}).get("cpu_ms_per_image"), TARGETS["worker_cpu_ms_per_image"], False
        ),
        "worker_over_classify_batch": check(
            peers.get("worker_over_classify_batch"), TARGETS["worker_over_classify_batch"], True
        ),
        "two_workers_over_one": check(ratio["two_workers_over_one"], TARGETS["two_workers_over_one"], True),
        "bridge_over_raw": check(ratio["bridge_over_raw"], TARGETS["bridge_over_raw"], True),
        "per_record_ratio_to_forward": check(
            per_record.get("ratio_to_forward"), TARGETS["per_record_ratio_to_forward"], True
        ),
        "per_record_p99_ms_at_1000": check(per_record.get("p99_ms_at_1000"), TARGETS["p99_ms_at_1000"], False),
        "bridge_multistream_over_raw_single_stream": check(
            ratio["bridge_multistream_over_raw_single_stream"],
            TARGETS["bridge_multistream_over_raw_single_stream"],
            True,
        ),
        # per variant: the median of the rounds' exactly_once / at_least_once (the machine is shared)
        **{
            f"exactly_once_over_at_least_once_{variant}": check(
                results.get("guarantees", {}).get(variant, {}).get("median_round_ratio"),
                TARGETS["exactly_once_over_at_least_once"],
                True,
            )
            for variant in ("per_record", "batch_records")
        },
        "worker_rss_mb": check(kafka.get("peak_rss_mb"), TARGETS["worker_rss_mb"], False),
        "worker_ready_s": check(kafka.get("ready_s_empty_changelog"), TARGETS["worker_ready_s"], False),
        "bridge_rss_mb": check(bridge.get("peak_rss_mb"), TARGETS["worker_rss_mb"], False),
        "bridge_ready_s": check(bridge.get("ready_s"), TARGETS["worker_ready_s"], False),
        "kafka_batched_images_per_s": check(
            results.get("kafka_batched", {}).get("images_per_s"), TARGETS["kafka_batched_images_per_s"], True
        ),
        "bridge_batched_images_per_s": check(
            results.get("bridge_batched", {}).get("images_per_s"), TARGETS["bridge_batched_images_per_s"], True
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts: a few seconds per stage")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results directory (default: bench/results; with --smoke: .run/bench/smoke, "
        "so a smoke run never overwrites the committed full results)",
    )
    parser.add_argument("--name", default="latest", help="file stem of the results (default: latest)")
    parser.add_argument(
        "--stages", default=",".join(ALL_STAGES), help="comma-separated subset of " + ",".join(ALL_STAGES)
    )
    parser.add_argument("--no-png", action="store_true", help="skip the matplotlib plot")
    parser.add_argument("--keep-topics", action="store_true", help="do not delete this run's topics")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = ROOT / ".run" / "bench" / "smoke" if args.smoke else ROOT / "bench" / "results"
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(wanted) - set(ALL_STAGES)
    if unknown:
        parser.error(f"unknown stage(s) {sorted(unknown)}")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    settings = load_settings()
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or not os.environ.get("PUBSUB_EMULATOR_HOST"):
        log(
            "bench: KAFKA_BOOTSTRAP_SERVERS / PUBSUB_EMULATOR_HOST not set (use tools/bench.sh or source .services.env)"
        )
        return 2
    plan = stages.Plan.smoke() if args.smoke else stages.Plan()
    run_dir = ROOT / ".run" / "bench"
    model_path = ensure_model(settings.model, run_dir, args.smoke, log)
    ctx = stages.Context(settings=settings, plan=plan, model_path=model_path, run_dir=run_dir, log=log)
    ctx.run_dir = run_dir / ctx.tag
    ctx.run_dir.mkdir(parents=True, exist_ok=True)

    started = time.time()
    results: dict[str, Any] = {
        "mode": "smoke" if args.smoke else "full",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tag": ctx.tag,
        "machine": machine(),
        "model": {"path": str(model_path), "version": model.read_manifest(model_path).get("model_version")},
        "plan": {k: v for k, v in vars(plan).items()},
    }
    runners = {
        "ceiling": stages.model_ceiling,
        "naive": stages.naive_baseline,
        "kafka": stages.kafka_e2e,
        "per_record": stages.per_record,
        "pubsub": stages.pubsub_raw,
        "bridge": stages.pubsub_bridge,
        "bridge_multistream": stages.bridge_multistream,
        "two_workers": stages.two_workers,
        "kafka_batched": stages.kafka_batched,
        "bridge_batched": stages.bridge_batched,
        "peers": stages.peers,
        "guarantees": stages.guarantees,
    }
    failed = []
    try:
        for name in wanted:
            log(f"bench: stage {name} ...")
            t0 = time.perf_counter()
            try:
                results[name] = runners[name](ctx)
            except Exception as exc:  # keep going: the other stages are still worth having
                failed.append(name)
                results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
                log(f"bench: stage {name} FAILED: {exc}")
            results[name]["stage_seconds"] = round(time.perf_counter() - t0, 1)
            log(f"bench: stage {name} done in {results[name]['stage_seconds']} s")
    finally:
        if not args.keep_topics:
            try:
                deleted = delete_topics_with_prefix(ctx.bootstrap, ctx.tag)
                log(f"bench: deleted {len(deleted)} topics of this run")
            except Exception as exc:
                log(f"bench: could not delete topics: {exc!r}")
            if {"pubsub", "bridge", "bridge_multistream", "bridge_batched"} & set(wanted):
                try:
                    log(f"bench: deleted {stages.delete_pubsub_tagged(settings, ctx.tag)} Pub/Sub resources")
                except Exception as exc:
                    log(f"bench: could not delete Pub/Sub resources: {exc!r}")
    results["ratios"] = ratios(results)
    results["targets"] = targets(results, results["ratios"])
    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["total_seconds"] = round(time.time() - started, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{args.name}.json"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(json_path)
    (args.out / f"{args.name}.md").write_text(report.markdown(results))
    if not args.no_png:
        report.plot(results, args.out / f"{args.name}.png")
    log(report.markdown(results))
    log(f"bench: wrote {json_path} (+ .md{'' if args.no_png else ', .png'}) in {results['total_seconds']} s")
    if not failed:
        shutil.rmtree(ctx.run_dir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
