"""The bridge with each state store, and a fleet: images/s and commit latency.

    source .services.env && .venv/bin/python -m bench.fleet_bench [--images 10000]

For each configuration — SQLite, one replica; PostgreSQL, one replica; PostgreSQL, two
replicas (each in its own working directory) — a fresh set of topics and subscriptions on
the emulator gets ``--images`` labelled images published beforehand, then the replicas
start together; images/s is counted from the moment the first replica answers to the
moment ``/accuracy/`` shows them all (so the emulator's pull rate and the other replicas'
start-up are in it), and commit latency
p50/p99 is read from the replicas' ``fmnist_bridge_commit_seconds`` histograms (linear
within a bucket). PostgreSQL is a throwaway local server with fsync=on
(:mod:`bench.local_postgres`). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from fmnist_faust.client import MainManager
from fmnist_faust.config import load_settings, run_names
from fmnist_faust.core import dataset, model
from fmnist_faust.netutil import free_port, get_json, wait_ready
from pubsub_bridge.admin import setup, teardown

from .common import produce
from .local_postgres import LocalPostgres, find_bin_dir


def histogram(port: int) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of fmnist_bridge_commit_seconds on one replica."""
    import requests

    rows = []
    for line in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
        if line.startswith("fmnist_bridge_commit_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            rows.append((float("inf") if bound == "+Inf" else float(bound), float(line.rsplit(" ", 1)[1])))
    return rows


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    total = buckets[-1][1]
    target, lower, below = q * total, 0.0, 0.0
    for bound, count in buckets:
        if count >= target:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * ((target - below) / max(count - below, 1e-9))
        lower, below = bound, count
    return lower


def run(url: str, replicas: int, images: int, model_path: Path, split: dataset.Split, scratch: Path) -> dict:
    tag = uuid.uuid4().hex[:8]
    env = dict(os.environ, **run_names(tag))
    env.update(FMNIST_MODEL_PATH=str(model_path), FMNIST_LOG_LEVEL="warning", BRIDGE_STATE_URL=url)
    settings = load_settings(env)
    setup(settings)
    try:
        producer = MainManager("pubsub", settings).create_producer(settings.topics.images)
        try:
            produce(producer, split.images, split.labels, images, "fleet")
        finally:
            producer.close()
        procs, ports, logs = [], [], []
        for r in range(replicas):  # all spawned at once, so none pulls alone for long
            port = free_port()
            workdir = scratch / f"{tag}-{r}"
            workdir.mkdir()
            logs.append(workdir / "bridge.log")
            with open(logs[-1], "ab") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "pubsub_bridge", "run"],
                        env=dict(env, BRIDGE_WEB_PORT=str(port)),
                        cwd=workdir,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
            ports.append(port)
        started = 0.0
        for r, (proc, port) in enumerate(zip(procs, ports)):
            wait_ready(proc, f"http://127.0.0.1:{port}/accuracy/", logs[r], 60)
            if r == 0:  # the clock starts when the first replica answers (it pulls right after)
                started = time.monotonic()
                already = get_json(f"http://127.0.0.1:{port}/accuracy/")["images"]
        while get_json(f"http://127.0.0.1:{ports[0]}/accuracy/")["images"] < images:
            if time.monotonic() - started > 60 + images / 100:
                raise RuntimeError(f"not all {images} images counted; see {scratch}")
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        merged: dict[float, float] = {}
        for port in ports:
            for bound, count in histogram(port):
                merged[bound] = merged.get(bound, 0.0) + count
        buckets = sorted(merged.items())
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        return {
            "images_per_s": (images - already) / elapsed,
            "commits": int(buckets[-1][1]),
            "p50_ms": quantile(buckets, 0.5) * 1000,
            "p99_ms": quantile(buckets, 0.99) * 1000,
        }
    finally:
        teardown(settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10000)
    args = parser.parse_args()
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        sys.exit("PUBSUB_EMULATOR_HOST is not set: source .services.env (tools/services.sh start pubsub)")
    bin_dir = find_bin_dir()
    if bin_dir is None:
        sys.exit("no PostgreSQL installed (apt-get install postgresql)")
    split = dataset.load_split("test", load_settings().model.data_dir)
    server = LocalPostgres(bin_dir, fsync=True).init().start()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            scratch = Path(tmp)
            model_path = model.train_small(scratch / "tiny.joblib", load_settings().model.data_dir)
            for name, url, replicas in [
                ("SQLite", f"sqlite:///{scratch / 'state.sqlite3'}", 1),
                ("PostgreSQL", server.create_database("bench"), 1),
                ("PostgreSQL", server.create_database("bench"), 2),
            ]:
                result = run(url, replicas, args.images, model_path, split, scratch)
                rows.append((name, replicas, result))
                print(name, replicas, result, file=sys.stderr)
    finally:
        server.cleanup()
    print(f"bridge on the emulator, {args.images} images pre-published, batch 500")
    print("| store | replicas | images/s | commits | commit p50 ms | commit p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, replicas, r in rows:
        print(
            f"| {name} | {replicas} | {r['images_per_s']:,.0f} | {r['commits']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
