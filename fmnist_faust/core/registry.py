"""The model directory: verified models found by version, and the pointer that names one.

A version is a ``*.joblib`` file with its manifest (``*.json``) in the model directory
(``FMNIST_MODEL_DIR``), named by the manifest's ``model_version``. Listing reads manifests
only: nothing is unpickled to list. What travels between the control CLI and the workers
is a :class:`ModelPointer` (version + SHA-256), never model bytes; a process loads the
version from its *own* trusted directory and only if the file's hash equals both its
manifest and the pointer (:meth:`ModelRegistry.load`), so a file swapped together with its
manifest on one machine is refused too.

:class:`RolloutState` is what the pointer store holds (a compacted Kafka topic, the
bridge's state store): the live version, an optional shadow and the versions live before
(so a process restarted on a live version it refuses serves the last good one, not the
default). An empty state means "the default model" (``FMNIST_MODEL_PATH``), live when no
pointer was ever set.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .model import (
    MANIFEST_FORMAT,
    Classifier,
    ModelError,
    load_classifier,
    manifest_path_for,
    read_manifest,
    sha256_file,
    verify,
)


@dataclass(frozen=True)
class ModelPointer:
    """Names one verified model: its version and the SHA-256 of its joblib file."""

    version: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return {"version": self.version, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: Any) -> ModelPointer | None:
        if not isinstance(data, dict):
            return None
        version, sha256 = data.get("version"), data.get("sha256")
        if not isinstance(version, str) or not isinstance(sha256, str) or not version or len(sha256) != 64:
            raise ValueError(f"not a model pointer: {data!r}")
        return cls(version, sha256)


# Versions a rollout state remembers as live before: how far back a process restarted on a
# refused live version looks for one it can serve.
PREVIOUS_KEPT = 5


@dataclass(frozen=True)
class RolloutState:
    """Which version is live and which (if any) classifies in shadow; ``live=None``: the default."""

    live: ModelPointer | None = None
    shadow: ModelPointer | None = None
    updated_at: float = 0.0
    previous: tuple[ModelPointer, ...] = ()  # versions live before, newest first (PREVIOUS_KEPT)

    def to_json(self) -> str:
        return json.dumps(
            {
                "live": self.live.to_dict() if self.live else None,
                "shadow": self.shadow.to_dict() if self.shadow else None,
                "updated_at": self.updated_at,
                "previous": [pointer.to_dict() for pointer in self.previous],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes | None) -> RolloutState:
        """The state a pointer record holds; a missing record is the empty state (the default)."""
        if not text:
            return cls()
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"not a rollout state: {data!r}")
        previous = data.get("previous") or []  # absent in states written before it existed
        if not isinstance(previous, list):
            raise ValueError(f"not a list of model pointers: {previous!r}")
        return cls(
            ModelPointer.from_dict(data.get("live")),
            ModelPointer.from_dict(data.get("shadow")),
            float(data.get("updated_at") or 0.0),
            tuple(p for p in map(ModelPointer.from_dict, previous) if p is not None),
        )

    def promoted(self, pointer: ModelPointer) -> RolloutState:
        """``pointer`` live; a shadow of the same version is no longer a shadow; the version
        live until now heads :attr:`previous`."""
        shadow = None if self.shadow and self.shadow.version == pointer.version else self.shadow
        before = (self.live, *self.previous) if self.live else self.previous
        previous = tuple(p for p in before if p.version != pointer.version)[:PREVIOUS_KEPT]
        return RolloutState(pointer, shadow, time.time(), previous)

    def shadowed(self, pointer: ModelPointer | None) -> RolloutState:
        return RolloutState(self.live, pointer, time.time(), self.previous)


@dataclass(frozen=True)
class ModelEntry:
    """One version in the directory, as its manifest describes it (the file is not read)."""

    version: str
    path: Path
    sha256: str
    test_accuracy: float | None
    created_at: str | None
    drift_reference: bool = False  # the manifest holds the test split's drift reference

    def pointer(self) -> ModelPointer:
        return ModelPointer(self.version, self.sha256)


class ModelRegistry:
    """The versions of one trusted model directory, plus the default model's path.
    ``fail_on_white_images``: every model it loads injects that fault (:class:`Classifier`)."""

    def __init__(self, directory: Path, default_path: Path, *, fail_on_white_images: bool = False) -> None:
        self.directory = Path(directory)
        self.default_path = Path(default_path)
        self.fail_on_white_images = fail_on_white_images

    def entries(self) -> list[ModelEntry]:
        """Every manifest in the directory naming a joblib file beside it, by version; the
        default model's too, wherever it lives. Manifests only: nothing is unpickled."""
        manifests = sorted(self.directory.glob("*.json")) if self.directory.is_dir() else []
        default_manifest = manifest_path_for(self.default_path)
        if default_manifest.is_file() and default_manifest not in manifests:
            manifests.append(default_manifest)
        found: dict[str, ModelEntry] = {}
        for manifest_path in manifests:
            entry = _entry(manifest_path)
            if entry is not None and entry.version not in found:
                found[entry.version] = entry
        return sorted(found.values(), key=lambda e: (e.created_at or "", e.version))

    def default(self) -> ModelEntry:
        entry = _entry(manifest_path_for(self.default_path))
        if entry is None:
            read_manifest(self.default_path)  # raises the precise reason
            raise ModelError(f"{self.default_path}: no usable manifest beside it")
        return entry

    def find(self, version: str) -> ModelEntry:
        """The entry of ``version``; :class:`ModelError` naming the known ones if there is none."""
        for entry in self.entries():
            if entry.version == version:
                return entry
        known = ", ".join(e.version for e in self.entries()) or "none"
        raise ModelError(f"unknown model version {version!r} in {self.directory} (known: {known})")

    def verified_pointer(self, version: str) -> ModelPointer:
        """The pointer to ``version`` after checking its file against its manifest (hash,
        scikit-learn version, classes) without unpickling it: what the CLI publishes."""
        entry = self.find(version)
        verify(entry.path)
        return entry.pointer()

    def load(self, pointer: ModelPointer | None) -> Classifier:
        """The model ``pointer`` names (None: the default), loaded from this directory only if
        the pointer's SHA-256 equals the manifest's and the file's; else :class:`ModelError`."""
        if pointer is None:
            return load_classifier(self.default_path, fail_on_white_images=self.fail_on_white_images)
        entry = self.find(pointer.version)
        if entry.sha256 != pointer.sha256:
            raise ModelError(
                f"{entry.path}: manifest SHA-256 {entry.sha256[:16]}... differs from the pointer's "
                f"{pointer.sha256[:16]}... for {pointer.version}; refusing it"
            )
        actual = sha256_file(entry.path)
        if actual != pointer.sha256:
            raise ModelError(
                f"{entry.path}: SHA-256 {actual[:16]}... differs from the pointer's {pointer.sha256[:16]}... "
                f"for {pointer.version}; refusing to unpickle a file that was changed"
            )
        # verifies the bytes it unpickles against the manifest
        classifier = load_classifier(entry.path, fail_on_white_images=self.fail_on_white_images)
        if classifier.version != pointer.version:
            raise ModelError(f"{entry.path}: holds {classifier.version}, not {pointer.version}")
        return classifier


def _entry(manifest_path: Path) -> ModelEntry | None:
    """A manifest of ours naming an existing joblib file beside it, else None."""
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return None
    model_file, version, digest = manifest.get("model_file"), manifest.get("model_version"), manifest.get("sha256")
    if not (isinstance(model_file, str) and isinstance(version, str) and isinstance(digest, str)):
        return None
    path = manifest_path.parent / Path(model_file).name
    if not path.is_file() or manifest_path_for(path) != manifest_path:
        return None
    accuracy = manifest.get("test_accuracy")
    return ModelEntry(
        version=version,
        path=path,
        sha256=digest,
        test_accuracy=float(accuracy) if isinstance(accuracy, (int, float)) else None,
        created_at=manifest.get("created_at") if isinstance(manifest.get("created_at"), str) else None,
        drift_reference=isinstance(manifest.get("drift_reference"), dict),
    )
