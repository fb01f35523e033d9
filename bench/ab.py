"""A/B of worker variants against the ``forward`` probe, on one pre-loaded topic, in one run.

    python -m bench.ab --rounds 4 base=code:/tmp/ab-base new= [thread=env:FMNIST_X=1]

Each variant is ``name=`` (this tree as it is), ``name=code:DIR`` (the worker imported from
another checkout, e.g. ``git worktree add /tmp/ab-base HEAD~3``) or ``name=env:VAR=VALUE,...``
(this tree with extra environment). Rounds run every variant, then the forward probe, back
to back on the same topic (one image per record), so the machine's load hits them alike;
reported: images/s and CPU ms per image of each round, best and median, and each round's
ratio to the forward probe. On a shared, noisy machine this is how a change is judged: a
ratio within one run, not a rate against another day's. Needs KAFKA_BOOTSTRAP_SERVERS.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Any

from fmnist_faust.config import load_settings

from . import stages
from .common import create_topics, delete_topics_with_prefix


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """``name=`` / ``name=code:DIR`` / ``name=env:A=1,B=2`` -> (name, extra environment)."""
    name, _, how = spec.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"variant {spec!r}: expected name=[code:DIR|env:VAR=VALUE,...]")
    if not how:
        return name, {}
    kind, _, rest = how.partition(":")
    if kind == "code":
        return name, {"BENCH_CODE_ROOT": str(Path(rest).resolve())}
    if kind == "env":
        return name, dict(item.split("=", 1) for item in rest.split(",") if item)
    raise argparse.ArgumentTypeError(f"variant {spec!r}: unknown kind {kind!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="+", type=parse_variant)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--loop", default="uvloop", help="Faust's -L for the forward probe (the worker's own loop)")
    parser.add_argument("--out", type=Path, default=Path(".run/ab"))
    args = parser.parse_args()
    settings = load_settings()
    args.out.mkdir(parents=True, exist_ok=True)
    model_path = Path(settings.model.path).resolve()  # a variant may run from another directory
    ctx = stages.Context(settings=settings, plan=stages.Plan(), model_path=model_path, run_dir=args.out.resolve())
    topic = ctx.name("ab-images")
    create_topics(ctx.bootstrap, [topic], settings.kafka.partitions)
    ctx.produce_kafka(topic, args.images, "ab")
    defaults = stages.CODE_DEFAULTS.pipeline
    rates: dict[str, list[int]] = {name: [] for name, _ in args.variants}
    rates["forward"] = []
    cpu: dict[str, list[float]] = {name: [] for name in rates}
    saved = dict(os.environ)
    try:
        for round_ in range(args.rounds):
            for name, extra in args.variants:
                os.environ.update(extra)
                try:
                    batch = int(extra.get("FMNIST_BATCH_SIZE", defaults.batch_size))  # the bench sets these two
                    linger = float(extra.get("FMNIST_BATCH_LINGER", defaults.batch_linger_s))
                    row: dict[str, Any] = stages.preloaded_run(
                        ctx, topic, args.images, batch, linger, f"ab-{name}-{round_}"
                    )
                finally:
                    os.environ.clear()
                    os.environ.update(saved)
                rates[name].append(row["images_per_s"])
                cpu[name].append(row["worker_cpu_ms_per_image"] or 0.0)
            row = stages.probe_run(ctx, topic, args.images, "forward", args.loop, f"ab-forward-{round_}")
            rates["forward"].append(row["images_per_s"])
            cpu["forward"].append(row["cpu_ms_per_image"])
            print(f"round {round_}: " + ", ".join(f"{k} {v[-1]:,}/s ({cpu[k][-1]} ms)" for k, v in rates.items()))
    finally:
        delete_topics_with_prefix(ctx.bootstrap, ctx.tag)
    for name, values in rates.items():
        print(
            f"{name}: best {max(values):,}/s, median {statistics.median(values):,.0f}/s, "
            f"CPU ms/image median {statistics.median(cpu[name]):.4f}"
        )
    for name, _ in args.variants:
        ratios = [round(a / b, 3) for a, b in zip(rates[name], rates["forward"])]
        print(
            f"{name}/forward: best-of {max(rates[name]) / max(rates['forward']):.3f}, "
            f"median of rounds {statistics.median(ratios):.3f}, rounds {ratios}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
