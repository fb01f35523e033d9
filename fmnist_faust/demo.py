"""``make demo``: stream the 10,000 test images through a real worker and check the result.

Starts a worker (``faust -A fmnist_faust worker``) on fresh, run-specific topics, replays
the test split with labels, shows progress and running accuracy, then prints the
streamed accuracy next to the offline accuracy of the same model on the same images
(they must be identical) and the throughput, and stops the worker.

Without a verified default model (a first run), the demo does not wait minutes for it: it
trains a quick model in seconds, streams with it while ``fmnist-train`` trains the default
model in the background, promotes that one live (``fmnist-model promote``, same worker, no
restart) and streams the test images again; then each version's streamed accuracy is
checked against its own offline accuracy.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .config import load_settings, run_names
from .core import dataset
from .core.model import Classifier, ModelError, load_classifier, train_small, verify
from .netutil import NotReady, free_port, get_json, port_free, wait_ready

QUICK_MODEL_FILE = "fmnist-mlp-quick.joblib"
# The quick model: a first result after seconds of training (test accuracy 0.8619; 5-16 s here).
QUICK_HIDDEN = (128,)
QUICK_TRAIN_IMAGES = 20000
QUICK_EPOCHS = 8
QUICK_TEST_IMAGES = 10000  # its test accuracy on the whole test split
ROUND_TIMEOUT = 600.0
SWITCH_TIMEOUT = 30.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fmnist_faust.demo", description=__doc__)
    parser.add_argument("--count", type=int, default=10000, help="test images to stream (per round)")
    parser.add_argument("--keep", action="store_true", help="leave the worker running at the end")
    parser.add_argument(
        "--train-args",
        default="",
        help="extra fmnist-train arguments for the default model when it has to be trained, e.g. '--seed 1'",
    )
    parser.add_argument(
        "--quick-model-only",
        action="store_true",
        help="only train the quick model, if there is no verified default model (tools/demo.sh: while Kafka starts)",
    )
    args = parser.parse_args(argv)
    demo_started = time.monotonic()

    run = time.strftime("%Y%m%d-%H%M%S")
    env = dict(os.environ)
    env.setdefault("FMNIST_APP_ID", f"fmnist-demo-{run}")
    for name, value in run_names(f"demo-{run}").items():
        env.setdefault(name, value)  # fresh topics: the totals are this run's only
    root = Path(__file__).resolve().parent.parent
    env.setdefault("FMNIST_WORKER_DATADIR", str(root / ".run" / f"demo-{run}"))
    if "FMNIST_WEB_PORT" not in env and not port_free(6066):
        env["FMNIST_WEB_PORT"] = str(free_port())  # 6066 is taken: do not read someone else's tables
    settings = load_settings(env)
    quick_path = settings.model.directory / QUICK_MODEL_FILE
    if args.quick_model_only:
        try:
            verify(settings.model.path)
        except ModelError:
            quick_model(quick_path, settings.model.data_dir)
        return 0
    if not port_free(settings.web.port):
        raise SystemExit(f"demo: port {settings.web.port} is taken; set FMNIST_WEB_PORT to a free port")
    base = f"http://{settings.web.host}:{settings.web.port}"
    run_dir = root / ".run"
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / f"demo-worker-{run}.log"
    split = dataset.load_split("test", settings.model.data_dir)
    count = min(args.count, len(split))
    default_path = settings.model.path

    training: subprocess.Popen | None = None
    worker: subprocess.Popen | None = None
    try:
        try:
            verify(default_path)
        except ModelError as reason:
            print(f"not loading the default model: {reason}" if default_path.exists() else "no default model yet")
            first = quick_model(quick_path, settings.model.data_dir)
            print(
                f"quick model {first.version}: test accuracy {first.manifest['test_accuracy']:.4f}, "
                f"trained in {first.manifest['train_seconds']:.1f} s"
            )
            train_log = run_dir / f"demo-train-{run}.log"
            training = start_training(env, default_path, shlex.split(args.train_args), train_log)
            print(f"training the default model in the background meanwhile (fmnist-train, log {train_log})")
            env["FMNIST_MODEL_PATH"] = str(quick_path)  # the worker starts on it
            env["FMNIST_MODEL_DIR"] = str(settings.model.directory)  # and finds the default model there later
        else:
            first = load_classifier(default_path)
            print(f"model {first.version} (test accuracy at training: {first.manifest['test_accuracy']:.4f})")
        print(
            f"Kafka {settings.kafka.bootstrap_servers}; topics {settings.topics.images} -> "
            f"{settings.topics.predictions} (+ {settings.topics.dlq}); worker log {log_path}"
        )
        with open(log_path, "ab") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "faust", "-A", "fmnist_faust", "worker", "-l", "info"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            ready = wait_ready(worker, base + "/accuracy/", log_path)
        except NotReady as exc:
            raise SystemExit(f"demo: the worker is not ready: {exc}") from None
        print(f"worker ready in {ready:.1f} s, tables at {base}/accuracy/ (dashboard {base}/)")
        served = [first]
        stream_round(base, env, count, "round1", first.version, demo_started)
        if training is not None:
            second = wait_for_training(training, train_log, default_path)
            if second is None:
                check_rounds(base, served, split, count)
                return 1
            promote(base, env, second.version, worker.pid)
            served.append(second)
            stream_round(base, env, count, "round2", second.version, demo_started)
        identical = check_rounds(base, served, split, count)
        if args.keep:
            print(f"worker left running (pid {worker.pid}): {base}/")
        return 0 if identical else 1
    finally:
        if training is not None and training.poll() is None:
            training.terminate()
            training.wait(30)
        if worker is not None and not args.keep and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()


def quick_model(path: Path, data_dir: Path | None) -> Classifier:
    """The quick model for the first minutes of a first run: the verified one at ``path``,
    else one trained now (seconds)."""
    try:
        return load_classifier(path)
    except ModelError:
        train_small(
            path,
            data_dir,
            hidden=QUICK_HIDDEN,
            train_images=QUICK_TRAIN_IMAGES,
            test_images=QUICK_TEST_IMAGES,
            max_iter=QUICK_EPOCHS,
        )
        return load_classifier(path)


def start_training(env: dict[str, str], out: Path, extra_args: list[str], log_path: Path) -> subprocess.Popen:
    """``fmnist-train --out out`` in the background, its output in ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from fmnist_faust.cli import train_main; raise SystemExit(train_main())",
                "--out",
                str(out),
                *extra_args,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stream_round(base: str, env: dict[str, str], count: int, id_prefix: str, version: str, demo_started: float) -> None:
    """Send the first ``count`` test images under fresh ids and show ``version``'s running
    accuracy on them until all are counted."""
    started = time.monotonic()
    producer = subprocess.run(
        [
            sys.executable,
            "-c",
            "from fmnist_faust.cli import produce_main; raise SystemExit(produce_main())",
            "--count",
            str(count),
            "--id-prefix",
            id_prefix,
            "--quiet",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    print(producer.stdout.strip())
    shown = -1
    while True:
        part = live_part(get_json(base + "/accuracy/"), version)
        images = part["images"] if part else 0
        if images != shown:
            shown = images
            acc = f"{part['accuracy']:.4f}" if part and part["accuracy"] is not None else "n/a"
            sys.stdout.write(f"\r{version}: classified {shown:>6}/{count}  running accuracy {acc}  ")
            sys.stdout.flush()
        if images >= count:
            break
        if time.monotonic() - started > ROUND_TIMEOUT:
            raise SystemExit(f"\ndemo: not all images were classified within {ROUND_TIMEOUT / 60:.0f} minutes")
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    print()
    print(
        f"throughput: {count / elapsed:,.0f} images/s end to end ({count} images in {elapsed:.1f} s, "
        f"producer start to last prediction counted); {_clock(demo_started)} into the demo"
    )


def live_part(report: dict[str, Any], version: str) -> dict[str, Any] | None:
    """``version``'s part of the streamed totals (``by_model``), ``None`` before it counted any."""
    entry = report.get("by_model", {}).get(version)
    return entry["live"] if entry else None


def wait_for_training(training: subprocess.Popen, train_log: Path, model_path: Path) -> Classifier | None:
    """Show the background training's epochs as they end; the verified model, or ``None`` if
    training failed."""
    print("waiting for the default model (its epochs as they end):")
    shown = 0
    while True:
        finished = training.poll() is not None
        lines = train_log.read_text(errors="replace").splitlines()
        for line in lines[shown:]:
            if line.startswith(("epoch ", "trained in", "training MLP")):
                print(f"  {line}")
        shown = len(lines)
        if finished:
            break
        time.sleep(1.0)
    try:
        if training.returncode != 0:
            raise ModelError(f"fmnist-train exited with {training.returncode}")
        return load_classifier(model_path)
    except ModelError as exc:
        print(f"demo: the default model is not there: {exc}; see {train_log}")
        return None


def promote(base: str, env: dict[str, str], version: str, worker_pid: int) -> None:
    """``fmnist-model promote version``, then wait until the running worker serves it."""
    print(f"$ fmnist-model promote {version}")
    started = time.monotonic()
    command = subprocess.run(
        [sys.executable, "-m", "fmnist_faust.model_cli", "promote", version], env=env, capture_output=True, text=True
    )
    if command.returncode != 0:
        raise SystemExit(f"demo: fmnist-model promote failed ({command.returncode}): {command.stderr.strip()}")
    print(command.stdout.strip())
    while get_json(base + "/stats/")["models"]["live"] != version:
        if time.monotonic() - started > SWITCH_TIMEOUT:
            raise SystemExit(f"demo: the worker did not switch to {version} within {SWITCH_TIMEOUT:.0f} s")
        time.sleep(0.1)
    print(f"worker (pid {worker_pid}, no restart) serves {version} {time.monotonic() - started:.1f} s later")


def check_rounds(base: str, served: list[Classifier], split: dataset.Split, count: int) -> bool:
    """Each version's streamed accuracy next to its offline accuracy on the same images; True
    if they are identical for every version and the versions' parts make up the totals."""
    report = get_json(base + "/accuracy/")
    identical = True
    parts = []
    for classifier in served:
        part = live_part(report, classifier.version) or {"correct": 0, "labeled": 0, "accuracy": None}
        parts.append(part)
        predicted, _ = classifier.predict(split.images[:count])
        offline = int((predicted == split.labels[:count]).sum())
        same = part["correct"] == offline and part["labeled"] == count
        identical = identical and same
        streamed = f"{part['accuracy']:.4f}" if part["accuracy"] is not None else "n/a"
        print(
            f"{classifier.version} streamed accuracy: {streamed} ({part['correct']}/{part['labeled']}), "
            f"offline: {offline / count:.4f} ({offline}/{count})  -> {'identical' if same else 'DIFFERENT'}"
        )
    summed = all(
        sum(part[key] for part in parts) == report[key] == total
        for key, total in (("labeled", count * len(served)), ("correct", report["correct"]))
    )
    identical = identical and summed
    if len(served) > 1:
        print(
            f"totals: {report['correct']}/{report['labeled']} correct, "
            f"{'the sum of the versions' if summed else 'NOT the sum of the versions'}"
        )
    print(
        "per-class recall: "
        + ", ".join(
            f"{name} {v['recall']:.2f}" for name, v in parts[-1].get("per_class", {}).items() if v["recall"] is not None
        )
    )
    return identical


def _clock(started: float) -> str:
    minutes, seconds = divmod(int(time.monotonic() - started), 60)
    return f"{minutes}:{seconds:02d}"


if __name__ == "__main__":
    raise SystemExit(main())
