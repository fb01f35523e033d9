"""Profile the worker draining a pre-loaded topic with py-spy (sampling, no code changes).

    python -m bench.profile_worker --images 40000 --out .run/profile [--loop uvloop] [--probe forward]

Pre-loads ``--images`` images into a fresh topic, starts ``faust -A fmnist_faust worker``
(or with ``--probe``, ``bench/probe_app.py`` in that mode, for comparison) on it, attaches ``py-spy record`` (Python frames only, idle frames left out) once the first
images are counted and stops it when all are: ``OUT/profile.txt``
(collapsed stacks: grep them, or feed them to a flame graph tool). Prints the share of samples per
function of ours and of the libraries. Needs KAFKA_BOOTSTRAP_SERVERS (source .services.env)
and py-spy (the bench extra).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from fmnist_faust.config import load_settings

from . import stages
from .common import create_topics, delete_topics_with_prefix, wait_until


def record(pid: int, out: Path, rate: int, gil: bool) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` into collapsed stacks at ``out`` until interrupted."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    argv = [py_spy, "record", "--pid", str(pid), "--rate", str(rate), "--nonblocking", "--format", "raw"]
    argv += ["--gil"] if gil else []
    return subprocess.Popen([*argv, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize(collapsed: Path, top: int = 40) -> str:
    """Self time and inclusive time per function (lines merged) from py-spy's collapsed stacks."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [frame.rsplit(":", 1)[0] + ")" if ":" in frame else frame for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    lines = [f"{total} samples", "", "inclusive %  frame"]
    lines += [f"{100 * n / total:6.1f}  {frame}" for frame, n in inclusive.most_common(top)]
    lines += ["", "self %  frame"]
    lines += [f"{100 * n / total:6.1f}  {frame}" for frame, n in own.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=40_000)
    parser.add_argument("--out", type=Path, default=Path(".run/profile"))
    parser.add_argument("--loop", default=None, help="Faust's -L (default: the worker's own loop)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL (py-spy --gil)")
    parser.add_argument("--probe", choices=stages.PROBE_MODES, help="profile bench/probe_app.py in this mode instead")
    args = parser.parse_args()
    settings = load_settings()
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = stages.Context(settings=settings, plan=stages.Plan(), model_path=settings.model.path, run_dir=args.out)
    topic = ctx.name("profile-images")
    create_topics(ctx.bootstrap, [topic], settings.kafka.partitions)
    ctx.produce_kafka(topic, args.images, "prof")
    if args.probe:
        worker = stages.start_probe(ctx, topic, args.probe, args.loop, "profile")
        path, field = "/count/", "count"
    else:
        defaults = stages.CODE_DEFAULTS.pipeline
        env = stages._worker_env(ctx, "profile", topic, defaults.batch_size, defaults.batch_linger_s)
        worker = stages._start_worker(ctx, "profile", env, args.loop)
        path, field = "/accuracy/", "images"
    raw = args.out / "profile.txt"
    try:
        assert worker.proc is not None
        wait_until(lambda: worker.get(path)[field] > 0, timeout=60, interval=0.05)
        spy = record(worker.proc.pid, raw, args.rate, args.gil)
        t0, c0 = time.perf_counter(), worker.get(path)[field]
        wait_until(lambda: worker.get(path)[field] >= args.images, timeout=600, interval=0.2)
        seconds, counted = time.perf_counter() - t0, worker.get(path)[field] - c0
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        spy.wait(30)
    finally:
        worker.stop()
        delete_topics_with_prefix(ctx.bootstrap, ctx.tag)
    print(f"{counted} images in {seconds:.1f} s while profiled: {counted / seconds:,.0f}/s")
    print(summarize(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
