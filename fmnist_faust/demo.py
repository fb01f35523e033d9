"""``make demo``: stream the 10,000 test images through a real worker and check the result.

Starts a worker (``faust -A fmnist_faust worker``) on fresh, run-specific topics, replays
the test split with labels, shows progress and running accuracy, then prints the
streamed accuracy next to the offline accuracy of the same model on the same images
(they must be identical) and the throughput, and stops the worker.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from .config import load_settings, run_names
from .core import dataset
from .core.model import load_classifier
from .netutil import NotReady, free_port, get_json, port_free, wait_ready


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fmnist_faust.demo", description=__doc__)
    parser.add_argument("--count", type=int, default=10000, help="test images to stream")
    parser.add_argument("--keep", action="store_true", help="leave the worker running at the end")
    args = parser.parse_args(argv)

    run = time.strftime("%Y%m%d-%H%M%S")
    env = dict(os.environ)
    env.setdefault("FMNIST_APP_ID", f"fmnist-demo-{run}")
    for name, value in run_names(f"demo-{run}").items():
        env.setdefault(name, value)  # fresh topics: the totals are this run's only
    root = Path(__file__).resolve().parent.parent
    env.setdefault("FMNIST_WORKER_DATADIR", str(root / ".run" / f"demo-{run}"))
    if "FMNIST_WEB_PORT" not in os.environ and not port_free(6066):
        env["FMNIST_WEB_PORT"] = str(free_port())  # 6066 is taken: do not read someone else's tables
    settings = load_settings(env)
    if not port_free(settings.web.port):
        raise SystemExit(f"demo: port {settings.web.port} is taken; set FMNIST_WEB_PORT to a free port")
    base = f"http://{settings.web.host}:{settings.web.port}"
    log_path = root / ".run" / f"demo-worker-{run}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)

    classifier = load_classifier(settings.model.path)  # verify before starting anything
    split = dataset.load_split("test", settings.model.data_dir)
    count = min(args.count, len(split))
    print(f"model {classifier.version} (test accuracy at training: {classifier.manifest['test_accuracy']:.4f})")
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
        try:
            ready = wait_ready(worker, base + "/accuracy/", log_path)
        except NotReady as exc:
            raise SystemExit(f"demo: the worker is not ready: {exc}") from None
        print(f"worker ready in {ready:.1f} s, tables at {base}/accuracy/ (dashboard {base}/)")
        started = time.monotonic()
        producer = subprocess.run(
            [
                sys.executable,
                "-c",
                "from fmnist_faust.cli import produce_main; raise SystemExit(produce_main())",
                "--count",
                str(count),
                "--quiet",
            ],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        print(producer.stdout.strip())
        report, shown = {}, -1
        while True:
            report = get_json(base + "/accuracy/")
            acc = f"{report['accuracy']:.4f}" if report["accuracy"] is not None else "n/a"
            if report["images"] != shown:
                shown = report["images"]
                sys.stdout.write(f"\rclassified {shown:>6}/{count}  running accuracy {acc}  ")
                sys.stdout.flush()
            if report["images"] >= count:
                break
            if time.monotonic() - started > 600:
                raise SystemExit("\ndemo: not all images were classified within 10 minutes")
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        print()
        predicted, _ = classifier.predict(split.images[:count])
        offline_correct = int((predicted == split.labels[:count]).sum())
        identical = report["correct"] == offline_correct and report["labeled"] == count
        print(f"streamed accuracy: {report['accuracy']:.4f} ({report['correct']}/{report['labeled']})")
        print(
            f"offline accuracy:  {offline_correct / count:.4f} ({offline_correct}/{count})  "
            f"-> {'identical' if identical else 'DIFFERENT'}"
        )
        print(
            f"throughput: {count / elapsed:,.0f} images/s end to end ({count} images in {elapsed:.1f} s, "
            "producer start to last prediction counted)"
        )
        print(
            "per-class recall: "
            + ", ".join(
                f"{name} {v['recall']:.2f}" for name, v in report["per_class"].items() if v["recall"] is not None
            )
        )
        if args.keep:
            print(f"worker left running (pid {worker.pid}): {base}/")
        return 0 if identical else 1
    finally:
        if not args.keep and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()


if __name__ == "__main__":
    raise SystemExit(main())
