"""``make demo-pubsub``: the 10,000 test images through the Pub/Sub bridge on the emulator.

Runs ``setup`` for fresh, run-specific topics and subscriptions (so the totals are this
run's only, whatever else uses the emulator), starts ``python -m pubsub_bridge run`` and
``python -m pubsub_bridge watch``, replays the test split with ``fmnist-produce --backend
pubsub``, shows the running accuracy, waits until the bridge's ``/accuracy/`` counts every
image, prints the streamed accuracy next to the offline accuracy of the same model on the
same images (the confusion matrices must be identical) and the throughput, then stops
the bridge with SIGTERM and checks that it exits 0. Exit status 0 only if all of that held.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_faust.config import Settings, load_settings, run_names
from fmnist_faust.core import dataset
from fmnist_faust.core.model import load_classifier
from fmnist_faust.core.rollout import totals_report
from fmnist_faust.core.scores import Scores
from fmnist_faust.netutil import NotReady, free_port, get_json, port_free, wait_ready

ROOT = Path(__file__).resolve().parent.parent


def _demo_env(run: str, workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in run_names(f"demo-{run}").items():
        env.setdefault(name, value)
    env.setdefault("BRIDGE_STATE_PATH", str(workdir / "bridge-state.sqlite3"))
    if "BRIDGE_WEB_PORT" not in env and not port_free(6067):
        env["BRIDGE_WEB_PORT"] = str(free_port())  # 6067 is taken (another bridge?): use a free port
    return env


def _echo(stream: Any, prefix: str) -> threading.Thread:
    def pump() -> None:
        for line in stream:
            print(prefix + line.rstrip(), flush=True)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def _offline(settings: Settings, split: dataset.Split, count: int) -> Scores:
    classifier = load_classifier(settings.model.path)
    predicted, _ = classifier.predict(split.images[:count])
    scores = Scores()
    scores.record(split.labels[:count].tolist(), predicted.tolist(), [0.0] * count, settings.pipeline.window_seconds)
    return scores


def _stop(proc: subprocess.Popen, timeout: float = 30) -> tuple[int, float]:
    started = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pubsub_bridge.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=10000, help="test images to stream (default %(default)s)")
    args = parser.parse_args(argv)

    run = time.strftime("%Y%m%d-%H%M%S")
    workdir = ROOT / ".run" / f"demo-pubsub-{run}"
    workdir.mkdir(parents=True, exist_ok=True)
    env = _demo_env(run, workdir)
    settings = load_settings(env)
    if not settings.pubsub.emulator_host:
        raise SystemExit("demo: PUBSUB_EMULATOR_HOST is not set (tools/demo_pubsub.sh starts the emulator)")
    classifier = load_classifier(settings.model.path)  # verify before starting anything
    split = dataset.load_split("test", settings.model.data_dir)
    count = min(args.count, len(split))
    base = f"http://{settings.web.host}:{settings.bridge.web_port}"
    print(f"model {classifier.version} (test accuracy at training: {classifier.manifest['test_accuracy']:.4f})")
    print(f"Pub/Sub emulator {settings.pubsub.emulator_host}, project {settings.pubsub.project}; run {run}")

    python = sys.executable
    subprocess.run([python, "-m", "pubsub_bridge", "setup"], env=env, check=True)
    bridge_log = workdir / "bridge.log"
    with open(bridge_log, "ab") as log:
        bridge = subprocess.Popen([python, "-m", "pubsub_bridge", "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
    watch: subprocess.Popen | None = None
    try:
        try:
            ready = wait_ready(bridge, base + "/accuracy/", bridge_log)
        except NotReady as exc:
            raise SystemExit(f"demo: the bridge is not ready: {exc}") from None
        print(f"bridge ready in {ready:.1f} s: {base}/ (dashboard), {base}/accuracy/; log {bridge_log}")
        watch = subprocess.Popen(
            [python, "-m", "pubsub_bridge", "watch", "--count", str(count), "--timeout", "600"],
            env=dict(env, PYTHONUNBUFFERED="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        echo = _echo(watch.stdout, "watch: ")
        started = time.monotonic()
        producer = Path(python).with_name("fmnist-produce")
        command = (
            [str(producer)]
            if producer.exists()
            else [python, "-c", "from fmnist_faust.cli import produce_main; raise SystemExit(produce_main())"]
        )
        produced = subprocess.run(
            command + ["--backend", "pubsub", "--count", str(count), "--quiet"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        print("producer: " + produced.stdout.strip())
        while True:
            report = get_json(base + "/accuracy/")
            if report["images"] + report["rejected"] >= count:
                break
            if bridge.poll() is not None:
                raise SystemExit(f"demo: the bridge exited with {bridge.returncode}; see {bridge_log}")
            if time.monotonic() - started > 600:
                raise SystemExit(f"demo: only {report['images']} of {count} images counted in 10 minutes")
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        watch.wait(60)
        echo.join(5)

        offline = _offline(settings, split, count).report(classifier.version)
        identical = totals_report(report) == offline
        print(
            f"streamed accuracy (bridge /accuracy/): {report['accuracy']:.4f} "
            f"({report['correct']}/{report['labeled']}, {report['rejected']} rejected)"
        )
        print(
            f"offline accuracy (same model, same images): {offline['accuracy']:.4f} "
            f"({offline['correct']}/{offline['labeled']}) -> "
            f"{'identical, confusion matrix included' if identical else 'DIFFERENT'}"
        )
        if not identical:
            diff = np.asarray(report["confusion"]) - np.asarray(offline["confusion"])
            print(f"confusion matrix difference (streamed - offline):\n{diff}")
        print(
            f"throughput: {count / elapsed:,.0f} images/s end to end ({count} images in {elapsed:.1f} s, "
            "producer start to last image counted)"
        )
    finally:
        if watch is not None and watch.poll() is None:
            watch.terminate()
            watch.wait(10)
        code, took = _stop(bridge)
    clean = code == 0
    print(f"bridge stopped with SIGTERM in {took:.1f} s, exit {code}" + ("" if clean else f"; see {bridge_log}"))
    return 0 if identical and clean else 1


if __name__ == "__main__":
    sys.exit(main())
