"""Train, save, verify and run the classifier.

joblib files are pickles: loading one runs code. So a model is only loaded after its
SHA-256 matches the JSON manifest written beside it at training time and the
manifest's scikit-learn version matches the installed one. The manifest is the trust
anchor: keep it with the model, and never load a model that came from elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from . import augment, drift
from .contract import CLASS_NAMES, IMAGE_BYTES

MANIFEST_FORMAT = 1
DEFAULT_HIDDEN = (512, 256)
# Epochs of the learning-rate schedule: 20 of 12-35 s each on this project's shared 2-core machine.
DEFAULT_MAX_ITER = 20
# Training stops before an epoch that would end past this many seconds, so `make model`
# stays within its 10 minutes even on a busy machine (augmentation, scaling, scoring and
# saving take seconds on top).
DEFAULT_TIME_BUDGET = 540.0
VALIDATION_FRACTION = 0.1
# What to do about a missing or stale model, true in a checkout and in the image alike: the
# image has no Makefile, and `make model` runs the same command.
TRAIN_HINT = "train it with `fmnist-train` (`make model` in a checkout, the `model` service with Docker Compose)"
# Adam's step size falls on a cosine from the start rate to END_FRACTION of it over the
# planned epochs: small steps at the end settle the weights that large ones keep moving
# (test accuracy 0.9087 and 0.9058 for seeds 0 and 1, from 0.8990 at a constant 1e-3 on a
# machine of the same kind; README, "The model").
LEARNING_RATE_START = 1e-3
LEARNING_RATE_END_FRACTION = 0.02
# BLAS threads while training. On this project's small shared machine (broker, workers and
# tests on 2 cores) a partial_fit over 32,768 images took 3.5 s on one thread and 6.4 s on
# two: OpenBLAS's second thread spins waiting for a core. ``None``: the library's setting.
DEFAULT_TRAIN_BLAS_THREADS: int | None = 1
# Images scaled to float32 and fed to partial_fit at a time: 128 batches, ~100 MB.
CHUNK_IMAGES = 256 * 128


class ModelError(RuntimeError):
    """The model or its manifest is missing, tampered with or foreign."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_path_for(model_path: Path) -> Path:
    return Path(model_path).with_suffix(".json")


def build_mlp(hidden: tuple[int, ...] = DEFAULT_HIDDEN, seed: int = 0) -> Any:
    """The MLP, set up for :func:`fit_epochs`: one ``partial_fit`` call is one pass over the
    chunk it gets (``max_iter=1``); :func:`fit_epochs` shuffles, stops early and keeps the
    best epoch itself, so scikit-learn's own shuffling and early stopping are off."""
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(
        hidden_layer_sizes=hidden,
        alpha=1e-3,
        batch_size=256,
        learning_rate_init=LEARNING_RATE_START,
        max_iter=1,
        shuffle=False,
        early_stopping=False,
        random_state=seed,
    )


@dataclass
class FitReport:
    """What :func:`fit_epochs` did, for the log and the manifest."""

    epochs: int
    best_epoch: int
    validation_accuracy: float | None
    stopped_by: str  # "max_iter" or "time_budget" (the schedule was shortened to fit)
    epoch_seconds: list[float]
    learning_rates: list[float]


def cosine_learning_rate(progress: float) -> float:
    """Adam's step size at ``progress`` through the schedule (0: first epoch, 1: last)."""
    end = LEARNING_RATE_END_FRACTION
    return LEARNING_RATE_START * (end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0))))


def planned_epochs(max_iter: int, epoch_seconds: list[float], elapsed: float, time_budget: float) -> int:
    """Epochs the schedule spans: ``max_iter``, or as many as still end within the time
    budget at the last epoch's pace (never fewer than those already run)."""
    if not epoch_seconds:
        return max_iter
    done = len(epoch_seconds)
    fit = done + int(max(time_budget - elapsed, 0.0) // max(epoch_seconds[-1], 1e-9))
    return max(done, min(max_iter, fit))


def set_learning_rate(mlp: Any, rate: float) -> None:
    """Set the step size of ``mlp``'s next ``partial_fit`` calls. scikit-learn reads
    ``learning_rate_init`` only when it builds the optimizer, at the first call; after that
    the rate lives in the optimizer (no public way to change it between calls)."""
    optimizer = getattr(mlp, "_optimizer", None)
    if optimizer is None:
        mlp.set_params(learning_rate_init=rate)
    elif hasattr(optimizer, "learning_rate_init"):
        optimizer.learning_rate_init = rate
    else:
        raise ModelError(f"cannot set the learning rate of {type(optimizer).__name__} (scikit-learn changed?)")


def fit_epochs(
    mlp: Any,
    scaler: Any,
    images: np.ndarray,
    labels: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray] | None,
    max_iter: int,
    time_budget: float,
    seed: int,
    log: Callable[[str], None],
) -> FitReport:
    """Train ``mlp`` epoch by epoch on uint8 ``images``, scaled by the fitted ``scaler`` one
    chunk at a time (the float32 copy of the default augmented set would be 847 MB).

    scikit-learn's ``fit`` cannot do what this loop does: decay the step size over a
    schedule that a time budget may shorten (:func:`planned_epochs`), and judge epochs on
    held-out *originals* (its validation split would hold shifted twins of training images
    and so look better than it is). The weights of the epoch with the best validation
    accuracy are kept (the latest of equals).
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    best: tuple[list[np.ndarray], list[np.ndarray]] | None = None
    best_accuracy, best_epoch = -1.0, 0
    epoch_seconds: list[float] = []
    learning_rates: list[float] = []
    progress = 0.0
    stopped_by = "max_iter"
    scaled_validation = None
    if validation is not None:
        scaled_validation = (scaler.transform(validation[0].astype(np.float32)), validation[1])
    started = time.perf_counter()
    for epoch in range(1, max_iter + 1):
        planned = planned_epochs(max_iter, epoch_seconds, time.perf_counter() - started, time_budget)
        if epoch > planned:
            stopped_by = "time_budget"
            break
        progress = max(progress, (epoch - 1) / max(planned - 1, 1))
        learning_rates.append(cosine_learning_rate(progress))
        set_learning_rate(mlp, learning_rates[-1])
        epoch_started = time.perf_counter()
        order = rng.permutation(len(labels))
        loss = 0.0
        for first in range(0, len(order), CHUNK_IMAGES):
            rows = order[first : first + CHUNK_IMAGES]
            mlp.partial_fit(scaler.transform(images[rows].astype(np.float32)), labels[rows], classes=classes)
            loss += mlp.loss_ * len(rows)
        epoch_seconds.append(time.perf_counter() - epoch_started)
        line = f"epoch {epoch}/{planned}: step {learning_rates[-1]:.1e}, loss {loss / len(labels):.4f}, {epoch_seconds[-1]:.1f} s"
        if scaled_validation is None:
            log(line)
            continue
        accuracy = float(mlp.score(*scaled_validation))
        log(f"{line}, validation accuracy {accuracy:.4f}")
        if accuracy >= best_accuracy:
            best_accuracy, best_epoch = accuracy, epoch
            best = ([c.copy() for c in mlp.coefs_], [b.copy() for b in mlp.intercepts_])
    if best is not None:
        mlp.coefs_, mlp.intercepts_ = best
    return FitReport(
        epochs=len(epoch_seconds),
        best_epoch=best_epoch if best is not None else len(epoch_seconds),
        validation_accuracy=round(best_accuracy, 6) if best is not None else None,
        stopped_by=stopped_by,
        epoch_seconds=[round(s, 2) for s in epoch_seconds],
        learning_rates=[float(f"{rate:.4g}") for rate in learning_rates],
    )


def validation_split(n_images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out, kept) indices: a seeded ``VALIDATION_FRACTION`` of the original images is
    held out before augmentation, so no shifted twin of a validation image is trained on.
    Under 1,000 images nothing is held out (too few to judge epochs by)."""
    order = np.random.default_rng(seed).permutation(n_images)
    n_validation = int(n_images * VALIDATION_FRACTION) if n_images >= 1000 else 0
    return np.sort(order[:n_validation]), np.sort(order[n_validation:])


def _fit_scaler(images: np.ndarray) -> Any:
    """StandardScaler fitted chunk by chunk in float32 (fitting it on the whole uint8 array
    would convert all of it to float64 first: 1.7 GB for the default augmented set)."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler()
    for first in range(0, len(images), CHUNK_IMAGES):
        scaler.partial_fit(images[first : first + CHUNK_IMAGES].astype(np.float32))
    return scaler


def train(
    images: np.ndarray,
    labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    out_path: Path,
    hidden: tuple[int, ...] = DEFAULT_HIDDEN,
    max_iter: int = DEFAULT_MAX_ITER,
    seed: int = 0,
    verbose: bool = False,
    log: Callable[[str], None] = print,
    augmentation: str = augment.DEFAULT_AUGMENTATION,
    time_budget: float = DEFAULT_TIME_BUDGET,
    blas_threads: int | None = DEFAULT_TRAIN_BLAS_THREADS,
) -> dict[str, Any]:
    """Hold out a validation split of the original images, augment the rest, fit up to
    ``max_iter`` epochs within ``time_budget`` seconds, score on the test split, save
    model + manifest (with the test split's drift reference); return the manifest."""
    import joblib
    import sklearn
    from sklearn.pipeline import make_pipeline

    started = time.perf_counter()
    held_out, kept = validation_split(len(labels), seed)
    n_validation = len(held_out)
    validation = (images[held_out], labels[held_out]) if n_validation else None
    train_images, train_labels = augment.augment(images[kept], labels[kept], augmentation)
    log(
        f"training MLP{hidden} on {len(train_labels)} images ({len(kept)} x {augment.copies(augmentation)}, "
        f"augmentation {augmentation}), {n_validation} held out; max_iter={max_iter}, "
        f"time budget {time_budget:.0f} s ..."
    )
    with _blas_limit(blas_threads):
        scaler = _fit_scaler(train_images)
        mlp = build_mlp(hidden, seed)
        report = fit_epochs(
            mlp,
            scaler,
            train_images,
            train_labels,
            validation,
            max_iter,
            time_budget - (time.perf_counter() - started),
            seed,
            log if verbose else lambda _msg: None,
        )
        train_seconds = time.perf_counter() - started
        pipeline = make_pipeline(scaler, mlp)
        proba = pipeline.predict_proba(test_images.astype(np.float32))
        test_predicted = proba.argmax(axis=1)
        accuracy = float((test_predicted == test_labels).mean())
        reference = drift.Reference.of(
            drift.Observations.of(
                test_predicted, proba[np.arange(len(proba)), test_predicted], test_images, [0.0] * len(proba)
            )
        )
    log(
        f"trained in {train_seconds:.1f} s, {report.epochs} epochs (best {report.best_epoch}, "
        f"stopped by {report.stopped_by}); test accuracy {accuracy:.4f}"
    )

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".joblib.tmp")
    joblib.dump(pipeline, tmp)
    tmp.replace(out_path)
    digest = sha256_file(out_path)
    manifest = {
        "format": MANIFEST_FORMAT,
        "model_file": out_path.name,
        "sha256": digest,
        "model_version": f"mlp-{digest[:12]}",
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "estimator": "StandardScaler + MLPClassifier",
        "hyperparameters": {k: _jsonable(v) for k, v in mlp.get_params().items()},
        "training": {
            "method": "partial_fit epochs over shuffled chunks, Adam's step size on a cosine over the "
            "planned epochs; best validation epoch kept",
            "max_iter": max_iter,
            "time_budget_seconds": time_budget,
            "learning_rate_start": LEARNING_RATE_START,
            "learning_rate_end_fraction": LEARNING_RATE_END_FRACTION,
            "learning_rates": report.learning_rates,
            "seed": seed,
            "blas_threads": blas_threads,
            "validation_fraction": VALIDATION_FRACTION if n_validation else 0.0,
            "validation_images": n_validation,
            "validation_accuracy": report.validation_accuracy,
            "best_epoch": report.best_epoch,
            "stopped_by": report.stopped_by,
            "epoch_seconds": report.epoch_seconds,
        },
        "augmentation": {
            "kind": augmentation,
            "shifts": [list(shift) for shift in augment.SHIFTS[augmentation]],
            "copies": augment.copies(augmentation),
            "original_images": int(len(kept)),
        },
        "epochs": report.epochs,
        "train_images": int(len(train_labels)),
        "train_seconds": round(train_seconds, 2),
        "test_images": int(len(test_labels)),
        "test_accuracy": round(accuracy, 6),
        "class_names": list(CLASS_NAMES),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # What drift is measured against: the test split as this model classified it.
        "drift_reference": reference.to_manifest(),
    }
    manifest_path_for(out_path).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return repr(value)


def read_manifest(model_path: Path) -> dict[str, Any]:
    path = manifest_path_for(model_path)
    if not path.is_file():
        raise ModelError(f"{path}: manifest missing; refusing to load {model_path}; {TRAIN_HINT}")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise ModelError(f"{path}: manifest is not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ModelError(f"{path}: not a fmnist-faust model manifest (format {MANIFEST_FORMAT})")
    return manifest


def verify(model_path: Path) -> dict[str, Any]:
    """Check hash and library version against the manifest; return the manifest."""
    return _verify_bytes(Path(model_path), _read_model(Path(model_path)))


def _read_model(model_path: Path) -> bytes:
    if not model_path.is_file():
        raise ModelError(f"{model_path}: model file missing; {TRAIN_HINT}")
    return model_path.read_bytes()


def _verify_bytes(model_path: Path, data: bytes) -> dict[str, Any]:
    """Check ``data`` (the model file's bytes) against the manifest beside ``model_path``."""
    import sklearn

    manifest = read_manifest(model_path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.get("sha256"):
        raise ModelError(
            f"{model_path}: SHA-256 {digest[:16]}... does not match its manifest "
            f"({str(manifest.get('sha256'))[:16]}...); refusing to unpickle a file that was changed"
        )
    if manifest.get("sklearn_version") != sklearn.__version__:
        raise ModelError(
            f"{model_path}: trained with scikit-learn {manifest.get('sklearn_version')}, "
            f"installed is {sklearn.__version__}; {TRAIN_HINT}"
        )
    if list(manifest.get("class_names", [])) != list(CLASS_NAMES):
        raise ModelError(f"{model_path}: manifest class names differ from Fashion-MNIST's")
    return manifest


@dataclass
class Classifier:
    """A verified model; :meth:`predict` classifies a whole batch in one call.

    ``blas_threads``: BLAS threads per predict call (threadpoolctl), default 1. The worker
    and the bridge predict from one thread on a small machine they share with the broker;
    OpenBLAS's extra threads spin for work and, with every core busy, cost far more CPU
    than they save (``make bench``: about half the worker's CPU per image). ``None``
    leaves the process's BLAS setting alone.

    ``fail_on_white_images``: fault injection for tests and drills (``FMNIST_FAULT_WHITE_IMAGES``,
    docs: Operations): predict raises on any batch holding an all-white image, as a model that
    breaks on some input would.
    """

    estimator: Any
    version: str
    manifest: dict[str, Any]
    blas_threads: int | None = 1
    fail_on_white_images: bool = False

    def predict(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (class index, confidence) for an (n, 784) uint8 batch."""
        if pixels.ndim != 2 or pixels.shape[1] != IMAGE_BYTES:
            raise ValueError(f"expected (n, {IMAGE_BYTES}) pixels, got {pixels.shape}")
        if len(pixels) == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
        if self.fail_on_white_images and bool((pixels == 255).all(axis=1).any()):
            raise RuntimeError("injected fault (FMNIST_FAULT_WHITE_IMAGES=1): an all-white image")
        with _blas_limit(self.blas_threads):
            proba = self.estimator.predict_proba(pixels.astype(np.float32))
        predicted = proba.argmax(axis=1)
        return predicted, proba[np.arange(len(predicted)), predicted]


@lru_cache(maxsize=1)
def _blas_controller() -> Any:
    """One threadpoolctl controller (building one scans the loaded libraries: ~ms; using it: ~20 us)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _blas_limit(threads: int | None) -> contextlib.AbstractContextManager[Any]:
    """Limit BLAS to ``threads`` for a ``with`` block; ``None`` changes nothing."""
    if threads is None:
        return contextlib.nullcontext()
    return _blas_controller().limit(limits=threads, user_api="blas")


def load_classifier(model_path: Path, *, fail_on_white_images: bool = False) -> Classifier:
    """Verify, then load the very bytes that were verified (no window for a swap between
    hashing and unpickling). Raises :class:`ModelError` on any mismatch."""
    import joblib

    data = _read_model(Path(model_path))
    manifest = _verify_bytes(Path(model_path), data)
    estimator = joblib.load(io.BytesIO(data))
    return Classifier(
        estimator=estimator,
        version=str(manifest["model_version"]),
        manifest=manifest,
        fail_on_white_images=fail_on_white_images,
    )


def train_small(
    path: Path,
    data_dir: Path | None = None,
    seed: int = 0,
    hidden: tuple[int, ...] = (32,),
    train_images: int = 3000,
    test_images: int = 500,
    max_iter: int = 10,
) -> Path:
    """A small verified MLP (by default 32 hidden units, 3,000 training images, a second or
    two) for the tests, the benchmark's smoke run and the demo's first minutes, where the
    default model would take minutes. Another ``seed`` or ``hidden`` gives another version
    (the rollout tests need two or three)."""
    from . import dataset

    train_split, test_split = dataset.load_split("train", data_dir), dataset.load_split("test", data_dir)
    train(
        train_split.images[:train_images],
        train_split.labels[:train_images],
        test_split.images[:test_images],
        test_split.labels[:test_images],
        path,
        hidden=hidden,
        max_iter=max_iter,
        seed=seed,
        log=lambda _msg: None,
        augmentation="none",
    )
    return path
