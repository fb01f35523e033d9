"""`make soak`: a long run of the worker and the bridge at full speed, sampling their state.

    python -m bench.soak                                  # 2,000,000 worker / 300,000 bridge images
    python -m bench.soak --worker-images 200000 --bridge-images 50000 --horizon 30
    SOAK_WORKER_IMAGES=... SOAK_BRIDGE_IMAGES=... FMNIST_DEDUPE_SECONDS=... python -m bench.soak

One Faust worker (``faust -A fmnist_faust worker``) and one bridge (``python -m
pubsub_bridge run``) each get fresh topics / subscriptions and test images replayed with
unique ids (``soak-w-N`` / ``soak-p-N``), fed as fast as they count them (the producers
only stay a bounded backlog ahead, so the broker's disk and the emulator's memory do not
hold the whole run). Every ``--sample-seconds``: both processes' RSS, the images each has
counted (``/accuracy/``), the worker's changelog topics (records from end offsets, bytes
from the broker's data directory when it is ours) and the bridge store (file bytes, rows).
Then each is restarted (SIGTERM, start) with new images already waiting, timing spawn ->
first new image counted. Totals are checked against the model's offline predictions on
the same images, to the image. Results: ``bench/results/soak.{json,md,png}``.

Both processes run with ``FMNIST_DEDUPE_SECONDS`` = ``--horizon`` (default 60 s, shorter
than the run, so the horizon's effect on memory and store size shows).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_faust.config import Settings, load_settings, run_names
from fmnist_faust.core import dataset
from fmnist_faust.core.model import load_classifier

from .common import (
    ROOT,
    ServiceProc,
    create_topics,
    delete_topics_with_prefix,
    env_with,
    free_port,
    produce,
    status_mb,
)
from .stages import delete_pubsub_tagged

TARGETS = {"worker_rss_growth_mb": 50, "restart_to_first_new_s": 15, "bridge_store_over_one_horizon": 1.5}
BACKLOG = 50_000  # images a producer may be ahead of what was counted
CHUNK = 5_000  # images per producer call
RESTART_IMAGES = 1_000  # new images waiting when a process restarts


@dataclass
class SoakPlan:
    worker_images: int
    bridge_images: int
    horizon_s: float
    sample_s: float
    rss_from_image: int  # RSS growth is measured from the sample nearest this many images counted
    restart: tuple[str, ...] = ("worker", "bridge")  # which processes are restarted at the end


def rss_mb(pid: int) -> float | None:
    """Current resident set size (VmRSS) in MiB: growth shows here, not in the peak."""
    return status_mb(pid, "VmRSS")


def store_stats(path: Path) -> dict[str, int | None]:
    """The bridge store's file sizes and key count (a WAL reader: no writer waits on it)."""
    sizes = {
        suffix or "db": (Path(f"{path}{suffix}").stat().st_size if Path(f"{path}{suffix}").exists() else 0)
        for suffix in ("", "-wal")
    }
    rows: int | None = None
    if path.exists():
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            try:
                rows = int(db.execute("SELECT COUNT(*) FROM processed").fetchone()[0])
            except sqlite3.Error:
                rows = None
    return {"store_bytes": sizes["db"], "store_wal_bytes": sizes["-wal"], "store_rows": rows}


def our_kafka_data_dir(bootstrap: str) -> Path | None:
    """The broker's log directory, when the broker is the one tools/services.sh started here."""
    port_file, data = ROOT / ".run" / "kafka" / "port", ROOT / ".run" / "kafka" / "data"
    if port_file.exists() and data.is_dir() and bootstrap.endswith(":" + port_file.read_text().strip()):
        return data
    return None


class ChangelogProbe:
    """End offsets (records) and on-disk bytes of the worker's changelog topics."""

    def __init__(self, bootstrap: str, app_id: str, data_dir: Path | None) -> None:
        self.bootstrap = bootstrap
        self.prefix = app_id + "-"
        self.data_dir = data_dir

    def sample(self) -> dict[str, Any]:
        return asyncio.run(self._sample())

    async def _sample(self) -> dict[str, Any]:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            cluster = await consumer._client.fetch_all_metadata()  # the consumer's own view has no topics
            topics = sorted(t for t in cluster.topics() if t.startswith(self.prefix) and t.endswith("-changelog"))
            tps = [TopicPartition(t, p) for t in topics for p in sorted(cluster.partitions_for_topic(t) or ())]
            ends = await consumer.end_offsets(tps) if tps else {}
        finally:
            await consumer.stop()
        records = {t: int(sum(v for tp, v in ends.items() if tp.topic == t)) for t in topics}
        result: dict[str, Any] = {"changelog_records": records}
        if self.data_dir is not None:
            # Segment files only: a partition's index files are preallocated (10 MiB) whatever it holds.
            result["changelog_bytes"] = {
                t: sum(f.stat().st_size for f in self.data_dir.glob(f"{t}-*/*.log")) for t in topics
            }
        return result


@dataclass
class Side:
    """One process under soak (worker or bridge) and what was measured on it."""

    name: str
    proc: ServiceProc
    total: int
    prefix: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    sent: int = 0
    error: BaseException | None = None

    def counted(self) -> int:
        return int(self.proc.get("/accuracy/")["images"])


class Soak:
    def __init__(
        self, settings: Settings, plan: SoakPlan, model_path: Path, run_dir: Path, log: Callable[[str], None]
    ) -> None:
        self.settings = settings
        self.plan = plan
        self.model_path = model_path
        self.run_dir = run_dir
        self.log = log
        self.tag = f"soak-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.split = dataset.load_split("test", settings.model.data_dir)
        self.stop_sampling = threading.Event()

    # ----------------------------------------------------------------- processes
    def worker_env(self) -> dict[str, str]:
        return env_with(
            FMNIST_APP_ID=f"{self.tag}-app",
            FMNIST_IMAGES_TOPIC=f"{self.tag}-images",
            FMNIST_PREDICTIONS_TOPIC=f"{self.tag}-predictions",
            FMNIST_DLQ_TOPIC=f"{self.tag}-dlq",
            FMNIST_WEB_PORT=str(free_port()),
            FMNIST_WORKER_DATADIR=str(self.run_dir / "worker"),
            FMNIST_MODEL_PATH=str(self.model_path),
            FMNIST_DEDUPE_SECONDS=str(self.plan.horizon_s),
            FMNIST_LOG_LEVEL="warning",
            OMP_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
        )

    def bridge_env(self) -> dict[str, str]:
        return env_with(
            **run_names(self.tag),
            BRIDGE_WEB_PORT=str(free_port()),
            FMNIST_WEB_HOST="127.0.0.1",
            BRIDGE_STATE_PATH=str(self.run_dir / "bridge-state.sqlite3"),
            FMNIST_MODEL_PATH=str(self.model_path),
            FMNIST_DEDUPE_SECONDS=str(self.plan.horizon_s),
            FMNIST_LOG_LEVEL="info",
            PUBSUB_ACK_DEADLINE_SECONDS="10",  # like the tests: redeliveries after a restart within seconds
            # Like the tests: the emulator keeps leasing messages to a stopped bridge's streams (it never
            # sees them cancelled, see tools/emulator_dead_stream.py), each lease a delivery attempt; with
            # 5 attempts it dead-letters new images no bridge saw. 100 lets them reach the new bridge.
            PUBSUB_MAX_DELIVERY_ATTEMPTS="100",
            OMP_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
        )

    def producer(self, side: Side) -> Any:
        from fmnist_faust.client import MainManager

        settings = load_settings(side.proc.env)
        backend = "kafka" if side.name == "worker" else "pubsub"
        return MainManager(backend, settings).create_producer(settings.topics.images)

    # ----------------------------------------------------------------- feeding and sampling
    def feed(self, side: Side, count: int, bounded: bool = True) -> None:
        """Send ``count`` more images with ids continuing from ``side.sent``; ``bounded``:
        stay at most :data:`BACKLOG` ahead of what the process counted."""
        producer = self.producer(side)
        try:
            end = side.sent + count
            while side.sent < end:
                while bounded and side.sent - side.counted() > BACKLOG:
                    time.sleep(0.2)
                n = min(CHUNK, end - side.sent)
                produce(producer, self.split.images, self.split.labels, n, side.prefix, start_index=side.sent)
                side.sent += n
        finally:
            producer.close()

    def sample_loop(self, sides: Sequence[Side], changelog: ChangelogProbe, store_path: Path, started: float) -> None:
        while not self.stop_sampling.wait(self.plan.sample_s):
            for side in sides:
                try:
                    row: dict[str, Any] = {
                        "t": round(time.perf_counter() - started, 2),
                        "images": side.counted(),
                        "rss_mb": rss_mb(side.proc.proc.pid) if side.proc.proc else None,
                    }
                    row.update(changelog.sample() if side.name == "worker" else store_stats(store_path))
                except (OSError, ValueError) as exc:  # a restart in progress: skip this sample
                    self.log(f"soak: {side.name} sample skipped ({exc})")
                    continue
                side.samples.append(row)

    def wait_counted(self, side: Side, count: int) -> None:
        deadline = time.monotonic() + 300 + count / 100
        while side.counted() < count:
            if side.proc.proc is None or side.proc.proc.poll() is not None:
                raise RuntimeError(f"{side.name} exited; log {side.proc.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{side.name} counted {side.counted()}/{count}; log {side.proc.log_path}")
            time.sleep(0.5)

    def restart(self, side: Side) -> dict[str, Any]:
        """SIGTERM, start, send new images as soon as it answers: seconds from spawn to ready,
        to the first new image counted and to the last. On the emulator the last can take
        several ack deadlines for the bridge: part of the new images is leased to the stopped
        bridge's streams first (see tools/emulator_dead_stream.py)."""
        before = side.counted()
        side.proc.stop()
        spawned = time.perf_counter()
        side.proc.start(ready_timeout=300)
        self.feed(side, RESTART_IMAGES, bounded=False)
        while side.counted() <= before:
            if time.perf_counter() - spawned > 300:
                raise RuntimeError(f"{side.name}: no new image counted 300 s after the restart")
            time.sleep(0.05)
        first_new = time.perf_counter() - spawned
        self.wait_counted(side, before + RESTART_IMAGES)
        return {
            "ready_s": side.proc.ready_s,
            "restart_to_first_new_s": round(first_new, 2),
            "restart_to_all_new_s": round(time.perf_counter() - spawned, 2),
            "rss_mb_after": rss_mb(side.proc.proc.pid) if side.proc.proc else None,
        }

    def expected(self, n: int) -> tuple[int, int]:
        """(images, correct) the model gives offline on the first ``n`` replayed images."""
        predicted, _ = load_classifier(self.model_path).predict(self.split.images)
        correct = (np.asarray(predicted) == self.split.labels).astype(np.int64)
        full, rest = divmod(n, len(correct))
        return n, int(full * correct.sum() + correct[:rest].sum())

    # ----------------------------------------------------------------- the run
    def run(self) -> dict[str, Any]:
        bootstrap = self.settings.kafka.bootstrap_servers
        wenv, benv = self.worker_env(), self.bridge_env()
        create_topics(bootstrap, [wenv["FMNIST_IMAGES_TOPIC"]], self.settings.kafka.partitions)
        setup = subprocess.run(
            [sys.executable, "-m", "pubsub_bridge", "setup"],
            env=benv,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if setup.returncode != 0:
            raise RuntimeError(f"pubsub_bridge setup failed: {setup.stderr[-2000:]}")
        worker = Side(
            "worker",
            ServiceProc.faust(
                "fmnist_faust", wenv, self.run_dir / "worker.log", int(wenv["FMNIST_WEB_PORT"]), "/accuracy/"
            ),
            self.plan.worker_images,
            "soak-w",
        )
        bridge = Side(
            "bridge",
            ServiceProc(
                [sys.executable, "-m", "pubsub_bridge", "run"],
                benv,
                self.run_dir / "bridge.log",
                int(benv["BRIDGE_WEB_PORT"]),
                "/accuracy/",
            ),
            self.plan.bridge_images,
            "soak-p",
        )
        store_path = Path(benv["BRIDGE_STATE_PATH"])
        changelog = ChangelogProbe(bootstrap, wenv["FMNIST_APP_ID"], our_kafka_data_dir(bootstrap))
        result: dict[str, Any] = {"tag": self.tag, "plan": self.plan.__dict__, "targets": TARGETS}
        try:
            for side in (worker, bridge):
                side.proc.start(ready_timeout=180)
            started = time.perf_counter()
            sampler = threading.Thread(
                target=self.sample_loop, args=((worker, bridge), changelog, store_path, started), daemon=True
            )
            sampler.start()

            def stream(side: Side) -> None:
                try:
                    self.feed(side, side.total)
                    self.wait_counted(side, side.total)
                    side.samples.append(
                        {
                            "t": round(time.perf_counter() - started, 2),
                            "images": side.counted(),
                            "rss_mb": rss_mb(side.proc.proc.pid) if side.proc.proc else None,
                            **(changelog.sample() if side.name == "worker" else store_stats(store_path)),
                        }
                    )
                except BaseException as exc:
                    side.error = exc

            threads = [threading.Thread(target=stream, args=(side,)) for side in (worker, bridge)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for side in (worker, bridge):
                if side.error is not None:
                    raise RuntimeError(f"{side.name}: {side.error}") from side.error
            result["stream_seconds"] = round(time.perf_counter() - started, 1)
            for side in (worker, bridge):
                result[side.name] = {"totals_before_restart": self.check_totals(side, side.total)}
            result["bridge"]["pruned_before_restart"] = self.metric(bridge, "fmnist_bridge_pruned_total")
            for side in (worker, bridge):
                if side.name in self.plan.restart:
                    result[side.name]["restart"] = self.restart(side)
                    result[side.name]["totals_after_restart"] = self.check_totals(side, side.total + RESTART_IMAGES)
            self.stop_sampling.set()
            sampler.join(30)
            for side in (worker, bridge):
                result[side.name]["samples"] = side.samples
                result[side.name]["peak_rss_mb"] = side.proc.sample_rss()
            longest = self.metric(bridge, "fmnist_bridge_longest_prune_seconds")
            result["bridge"]["longest_prune_s"] = None if longest is None else round(longest, 4)
            result["bridge"]["pruned_after_restart"] = self.metric(bridge, "fmnist_bridge_pruned_total")
        finally:
            self.stop_sampling.set()
            for side in (worker, bridge):
                side.proc.stop()
            delete_topics_with_prefix(bootstrap, self.tag)
            delete_pubsub_tagged(self.settings, self.tag)
        result["figures"] = figures(result, self.plan)
        return result

    def check_totals(self, side: Side, n: int) -> dict[str, Any]:
        report = side.proc.get("/accuracy/")
        images, correct = self.expected(n)
        return {
            "images": report["images"],
            "correct": report["correct"],
            "expected_images": images,
            "expected_correct": correct,
            "exact": report["images"] == images and report["correct"] == correct,
        }

    @staticmethod
    def metric(side: Side, name: str) -> float | None:
        import urllib.request

        with urllib.request.urlopen(side.proc.url("/metrics"), timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return None


def figures(result: dict[str, Any], plan: SoakPlan) -> dict[str, Any]:
    """The target figures from the samples (None when the run is too short to say)."""
    worker, bridge = result["worker"]["samples"], result["bridge"]["samples"]
    with_rss = [s for s in worker if s.get("rss_mb") is not None]
    start = min(with_rss, key=lambda s: abs(s["images"] - plan.rss_from_image), default=None)
    end = max((s for s in with_rss if s["images"] <= plan.worker_images), key=lambda s: s["images"], default=None)
    growth = round(end["rss_mb"] - start["rss_mb"], 1) if start and end else None
    first = next((s for s in bridge if s["images"] > 0), None)
    at_horizon = next((s for s in bridge if first and s["t"] >= first["t"] + plan.horizon_s), None)
    later = [s["store_bytes"] for s in bridge if at_horizon and s["t"] >= at_horizon["t"]]
    ratio = (
        round(max(later) / at_horizon["store_bytes"], 2) if later and at_horizon and at_horizon["store_bytes"] else None
    )
    exact = all(
        result[name][key]["exact"]
        for name in ("worker", "bridge")
        for key in ("totals_before_restart", "totals_after_restart")
        if key in result[name]
    )
    return {
        "worker_rss_growth_mb": growth,
        "worker_rss_window": [start["images"], end["images"]] if start and end else None,
        "worker_restart_to_first_new_s": result["worker"].get("restart", {}).get("restart_to_first_new_s"),
        "bridge_restart_to_first_new_s": result["bridge"].get("restart", {}).get("restart_to_first_new_s"),
        "bridge_store_bytes_at_one_horizon": at_horizon["store_bytes"] if at_horizon else None,
        "bridge_store_bytes_max_after": max(later) if later else None,
        "bridge_store_over_one_horizon": ratio,
        "bridge_store_rows_max": max((s["store_rows"] or 0 for s in bridge), default=None),
        "totals_exact": exact,
    }


def markdown(result: dict[str, Any]) -> str:
    f, plan = result["figures"], result["plan"]

    def verdict(value: float | None, target: float) -> str:
        return "n/a (run too short)" if value is None else ("met" if value <= target else "NOT met")

    rows = [
        (
            "worker RSS growth, images {} -> {} (MB)".format(*(f["worker_rss_window"] or ("?", "?"))),
            f["worker_rss_growth_mb"],
            TARGETS["worker_rss_growth_mb"],
        ),
        (
            "worker restart -> first new image counted (s)",
            f["worker_restart_to_first_new_s"],
            TARGETS["restart_to_first_new_s"],
        ),
        (
            "bridge restart -> first new image counted (s)",
            f["bridge_restart_to_first_new_s"],
            TARGETS["restart_to_first_new_s"],
        ),
        (
            "bridge store, max after one horizon / at one horizon",
            f["bridge_store_over_one_horizon"],
            TARGETS["bridge_store_over_one_horizon"],
        ),
    ]
    lines = [
        f"# fmnist-faust soak ({result['started_at']})",
        "",
        f"{plan['worker_images']:,} images through one worker, {plan['bridge_images']:,} through the bridge, "
        f"FMNIST_DEDUPE_SECONDS={plan['horizon_s']:g}, sampled every {plan['sample_s']:g} s; streamed in "
        f"{result['stream_seconds']} s on {result['machine']['cpus']} shared CPUs "
        f"(load {result['machine']['loadavg_at_start']} at start).",
        "",
        "| figure | measured | target | |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| {name} | {'n/a' if v is None else v} | <= {t} | {verdict(v, t)} |" for name, v, t in rows]
    lines += [
        f"| totals exact to the image (before and after the restarts) | {f['totals_exact']} | True | "
        f"{'met' if f['totals_exact'] else 'NOT met'} |",
        "",
        f"Worker peak RSS {result['worker']['peak_rss_mb']} MB; bridge peak RSS {result['bridge']['peak_rss_mb']} MB; "
        f"bridge store at most {f['bridge_store_rows_max']:,} keys, {result['bridge']['pruned_before_restart']:,.0f} "
        f"pruned before the restart and {result['bridge']['pruned_after_restart']:,.0f} after, "
        f"longest delete transaction {result['bridge'].get('longest_prune_s')} s.",
        "",
        "![soak plot](soak.png)",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worker, bridge = result["worker"]["samples"], result["bridge"]["samples"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    ax.plot([s["images"] for s in worker], [s["rss_mb"] for s in worker], label="worker")
    ax.plot([s["images"] for s in bridge], [s["rss_mb"] for s in bridge], label="bridge")
    ax.set_xlabel("images counted"), ax.set_ylabel("RSS (MiB)"), ax.set_title("RSS"), ax.legend()
    ax = axes[0][1]
    for topic in sorted({t for s in worker for t in s.get("changelog_records", {})}):
        short = topic.split("-app-", 1)[-1]
        ax.plot(
            [s["images"] for s in worker],
            [s.get("changelog_records", {}).get(topic, 0) for s in worker],
            label=f"{short} (records)",
        )
    ax.set_xlabel("images counted"), ax.set_ylabel("records"), ax.set_title("worker changelog topics"), ax.legend()
    ax = axes[1][0]
    ax.plot(
        [s["t"] for s in bridge],
        [(s["store_bytes"] + s["store_wal_bytes"]) / 2**20 for s in bridge],
        label="file + WAL (MiB)",
    )
    ax2 = ax.twinx()
    ax2.plot([s["t"] for s in bridge], [s["store_rows"] or 0 for s in bridge], color="tab:red", label="keys")
    ax.set_xlabel("s"), ax.set_ylabel("MiB"), ax2.set_ylabel("keys")
    ax.set_title(f"bridge store (horizon {result['plan']['horizon_s']:g} s)")
    ax.legend(loc="upper left"), ax2.legend(loc="lower right")
    ax = axes[1][1]
    ax.plot([s["t"] for s in worker], [s["images"] for s in worker], label="worker")
    ax.plot([s["t"] for s in bridge], [s["images"] for s in bridge], label="bridge")
    ax.set_xlabel("s"), ax.set_ylabel("images counted"), ax.set_title("progress (restarts at the end)"), ax.legend()
    fig.suptitle(f"fmnist-faust soak, {result['started_at']}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker-images", type=int, default=int(os.environ.get("SOAK_WORKER_IMAGES", 2_000_000)))
    parser.add_argument("--bridge-images", type=int, default=int(os.environ.get("SOAK_BRIDGE_IMAGES", 300_000)))
    parser.add_argument(
        "--horizon",
        type=float,
        default=float(os.environ.get("FMNIST_DEDUPE_SECONDS") or 60),
        help="FMNIST_DEDUPE_SECONDS for both processes (default 60, or the variable)",
    )
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument(
        "--restart",
        default="worker,bridge",
        help="processes restarted at the end (default worker,bridge)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    settings = load_settings()
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or not settings.pubsub.emulator_host:
        print("soak: needs KAFKA_BOOTSTRAP_SERVERS and PUBSUB_EMULATOR_HOST (source .services.env)", file=sys.stderr)
        return 2
    plan = SoakPlan(
        args.worker_images,
        args.bridge_images,
        args.horizon,
        args.sample_seconds,
        rss_from_image=min(100_000, args.worker_images // 20),
        restart=tuple(args.restart.split(",")),
    )
    run_dir = ROOT / ".run" / "soak" / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    from .run import machine

    started_at = time.strftime("%Y-%m-%d %H:%M:%S")
    info = machine()
    result = Soak(settings, plan, settings.model.path, run_dir, log=lambda m: print(m, file=sys.stderr)).run()
    result.update(started_at=started_at, machine=dict(info, loadavg_at_end=[round(x, 2) for x in os.getloadavg()]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "soak.md").write_text(markdown(result))
    plot(result, args.out / "soak.png")
    print(markdown(result))
    return 0 if result["figures"]["totals_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
