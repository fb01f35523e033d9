"""Drift figures (docs: Drift): how far PSI moves on windows of the test split by sampling
alone, and how far on inverted images or one class; and the plot of a streamed run.

    python -m bench.drift offline [--model PATH] [--draws 200]   # table of PSI per window size
    python -m bench.drift plot RUN.json --png docs/drift.png      # a /drift/ document, per window

``offline`` classifies windows drawn from the test split with the model, outside any stream,
through the same core as the worker and the bridge (:mod:`fmnist_faust.core.drift`), against
the reference in the model's manifest (or, for a model trained before references existed,
one computed now on the test split the same way ``fmnist-train`` would). ``plot`` reads what
``tests/fmnist_faust/test_drift_kafka.py`` saves with ``DRIFT_FIGURE_JSON=RUN.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_faust.config import load_settings
from fmnist_faust.core import dataset, drift
from fmnist_faust.core.model import Classifier, load_classifier

SIZES = (500, 1000, 2000, 5000)


def observed(classifier: Classifier, images: np.ndarray) -> drift.Observations:
    predicted, confidence = classifier.predict(images)
    return drift.Observations.of(predicted, confidence, images, [0.0] * len(images))


def offline(model: Path, draws: int, seed: int) -> dict[str, Any]:
    classifier = load_classifier(model)
    split = dataset.load_split("test", load_settings().model.data_dir)
    reference, status = drift.Reference.from_manifest(classifier.manifest)
    if reference is None:
        reference, status = drift.Reference.of(observed(classifier, split.images)), "computed now on the test split"
    rng = np.random.default_rng(seed)
    noise = {}
    for size in SIZES:
        values = np.array(
            [
                list(drift.window_psi(reference, observed(classifier, split.images[rows]).histogram()).values())
                for rows in (rng.choice(len(split.images), size, replace=False) for _ in range(draws))
            ]
        )
        noise[size] = {
            name: {"p99": float(np.quantile(values[:, i], 0.99)), "max": float(values[:, i].max())}
            for i, name in enumerate(drift.SIGNAL_NAMES)
        }
    inverted = drift.window_psi(reference, observed(classifier, 255 - split.images[:1000]).histogram())
    one_class = {
        label: drift.window_psi(reference, observed(classifier, split.images[split.labels == label][:1000]).histogram())
        for label in range(10)
    }
    return {
        "model": classifier.version,
        "reference": status,
        "reference_images": reference.images,
        "draws": draws,
        "noise": noise,
        "inverted_1000": inverted,
        "one_class_1000": one_class,
    }


def print_offline(result: dict[str, Any]) -> None:
    names = drift.SIGNAL_NAMES
    print(f"model {result['model']}: reference {result['reference']} ({result['reference_images']} images)")
    print(f"test-split windows, {result['draws']} draws each: PSI p99 / max per signal")
    print("| window | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for size, signals in result["noise"].items():
        cells = [f"{signals[n]['p99']:.3f} / {signals[n]['max']:.3f}" for n in names]
        print(f"| {size} test images | " + " | ".join(cells) + " |")
    print("| 1000 inverted | " + " | ".join(f"{result['inverted_1000'][n]:.2f}" for n in names) + " |")
    lowest = {n: min(r[n] for r in result["one_class_1000"].values()) for n in names}
    highest = {n: max(r[n] for r in result["one_class_1000"].values()) for n in names}
    print(
        "| 1000 of one class (lowest..highest of the 10) | "
        + " | ".join(f"{lowest[n]:.2f}..{highest[n]:.2f}" for n in names)
        + " |"
    )


def plot(run: Path, png: Path) -> None:
    """PSI per window and signal of each model in a saved ``/drift/`` document."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    saved = json.loads(run.read_text())
    document = saved["drift"]
    models = document["models"]
    figure, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.2), sharey=True, squeeze=False)
    for axis, (version, part) in zip(axes[0], models.items()):
        rows = [row for row in part["windows"] if row["psi"] is not None]
        x = np.arange(len(rows))
        for name in drift.SIGNAL_NAMES:
            axis.plot(x, [max(row["psi"][name], 1e-3) for row in rows], marker="o", label=name)
        axis.axhline(document["psi_alert"], color="#d9503f", linestyle="--", linewidth=1, label="alert 0.25")
        axis.axhline(document["psi_warn"], color="#e39a2d", linestyle=":", linewidth=1, label="warn 0.1")
        axis.set_yscale("log")
        axis.set_xticks(x, [_label(row) for row in rows], rotation=30, ha="right", fontsize=8)
        axis.set_title(f"{part['role']} {version}", fontsize=10)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("PSI against the test split's reference (log)")
    axes[0][-1].legend(fontsize=8, loc="upper left")
    figure.suptitle(
        f"{saved.get('backend', '')}: PSI per {document['window_seconds']}-s window (at least "
        f"{document['min_window_images']} images), the test split, then inverted, then one class",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    print(f"wrote {png}")


def _label(row: dict[str, Any]) -> str:
    return row.get("kind") or f"{row['images']} img"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    measure = commands.add_parser("offline", help="PSI of test-split, inverted and one-class windows")
    measure.add_argument("--model", type=Path, default=None, help="default: FMNIST_MODEL_PATH")
    measure.add_argument("--draws", type=int, default=200)
    measure.add_argument("--seed", type=int, default=0)
    measure.add_argument("--json", type=Path, default=None, help="also save the figures here")
    draw = commands.add_parser("plot", help="PSI per window of a saved /drift/ document")
    draw.add_argument("run", type=Path)
    draw.add_argument("--png", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "offline":
        result = offline(args.model or load_settings().model.path, args.draws, args.seed)
        print_offline(result)
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
    else:
        plot(args.run, args.png)


if __name__ == "__main__":
    main()
