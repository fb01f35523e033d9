"""Train, save, verify and run the classifier.

joblib files are pickles: loading one runs code. So a model is only loaded after its
SHA-256 matches the JSON manifest written beside it at training time and the
manifest's scikit-learn version matches the installed one. The manifest is the trust
anchor: keep it with the model, and never load a model that came from elsewhere.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .contract import CLASS_NAMES, IMAGE_BYTES

MANIFEST_FORMAT = 1
DEFAULT_HIDDEN = (512, 256)
DEFAULT_MAX_ITER = 40


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


def build_pipeline(
    hidden: tuple[int, ...] = DEFAULT_HIDDEN,
    max_iter: int = DEFAULT_MAX_ITER,
    seed: int = 0,
    early_stopping: bool = True,
    verbose: bool = False,
) -> Any:
    """Scaling + MLP in one pipeline, so callers feed raw uint8 pixels."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    mlp = MLPClassifier(
        hidden_layer_sizes=hidden,
        alpha=1e-3,
        batch_size=256,
        learning_rate_init=1e-3,
        max_iter=max_iter,
        early_stopping=early_stopping,
        validation_fraction=0.1,
        n_iter_no_change=5,
        random_state=seed,
        verbose=verbose,
    )
    return make_pipeline(StandardScaler(), mlp)


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
) -> dict[str, Any]:
    """Fit, score on the test split, save model + manifest; return the manifest."""
    import joblib
    import sklearn

    pipeline = build_pipeline(hidden, max_iter, seed, early_stopping=len(labels) >= 1000, verbose=verbose)
    log(f"training MLP{hidden} on {len(labels)} images (max_iter={max_iter}) ...")
    started = time.perf_counter()
    pipeline.fit(images.astype(np.float32), labels)
    train_seconds = time.perf_counter() - started
    accuracy = float((pipeline.predict(test_images.astype(np.float32)) == test_labels).mean())
    mlp = pipeline[-1]
    log(f"trained in {train_seconds:.1f} s, {mlp.n_iter_} epochs; test accuracy {accuracy:.4f}")

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
        "epochs": int(mlp.n_iter_),
        "train_images": int(len(labels)),
        "train_seconds": round(train_seconds, 2),
        "test_images": int(len(test_labels)),
        "test_accuracy": round(accuracy, 6),
        "class_names": list(CLASS_NAMES),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
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
        raise ModelError(f"{path}: manifest missing; refusing to load {model_path} (run `make model`)")
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
        raise ModelError(f"{model_path}: model file missing (run `make model`)")
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
            f"installed is {sklearn.__version__}; retrain with `make model`"
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
    """

    estimator: Any
    version: str
    manifest: dict[str, Any]
    blas_threads: int | None = 1

    def predict(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (class index, confidence) for an (n, 784) uint8 batch."""
        if pixels.ndim != 2 or pixels.shape[1] != IMAGE_BYTES:
            raise ValueError(f"expected (n, {IMAGE_BYTES}) pixels, got {pixels.shape}")
        if len(pixels) == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
        if self.blas_threads is None:
            proba = self.estimator.predict_proba(pixels.astype(np.float32))
        else:
            with _blas_controller().limit(limits=self.blas_threads, user_api="blas"):
                proba = self.estimator.predict_proba(pixels.astype(np.float32))
        predicted = proba.argmax(axis=1)
        return predicted, proba[np.arange(len(predicted)), predicted]


@lru_cache(maxsize=1)
def _blas_controller() -> Any:
    """One threadpoolctl controller (building one scans the loaded libraries: ~ms; using it: ~20 us)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def load_classifier(model_path: Path) -> Classifier:
    """Verify, then load the very bytes that were verified (no window for a swap between
    hashing and unpickling). Raises :class:`ModelError` on any mismatch."""
    import joblib

    data = _read_model(Path(model_path))
    manifest = _verify_bytes(Path(model_path), data)
    estimator = joblib.load(io.BytesIO(data))
    return Classifier(estimator=estimator, version=str(manifest["model_version"]), manifest=manifest)


def train_small(path: Path, data_dir: Path | None = None, seed: int = 0, hidden: tuple[int, ...] = (32,)) -> Path:
    """A small verified MLP (32 hidden units, 3,000 training images, a second or two) for the
    tests and the benchmark's smoke run, where the default model would take minutes. Another
    ``seed`` or ``hidden`` gives another version (the rollout tests need two or three)."""
    from . import dataset

    train_split, test_split = dataset.load_split("train", data_dir), dataset.load_split("test", data_dir)
    train(
        train_split.images[:3000],
        train_split.labels[:3000],
        test_split.images[:500],
        test_split.labels[:500],
        path,
        hidden=hidden,
        max_iter=10,
        seed=seed,
        log=lambda _msg: None,
    )
    return path
