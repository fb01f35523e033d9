"""Running accuracy: one mergeable, JSON-serialisable score record.

The Faust tables and the Pub/Sub bridge's store both hold :class:`Scores` as plain
dicts (``to_dict``/``from_dict``), and both serve :meth:`Scores.report`, so the two
backends answer ``/accuracy/`` with the same JSON. Per-class support, correct and
recall are derived from the confusion matrix rather than stored twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .contract import CLASS_NAMES, NUM_CLASSES

MAX_WINDOWS = 360  # one hour of 10-second windows


@dataclass
class Scores:
    """Counts for a set of classified images (a partition, a bridge, or a merge)."""

    confusion: np.ndarray = field(default_factory=lambda: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64))
    unlabeled: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    # window start (epoch seconds) -> [images, labeled, correct]
    windows: dict[int, list[int]] = field(default_factory=dict)

    @property
    def labeled(self) -> int:
        return int(self.confusion.sum())

    @property
    def correct(self) -> int:
        return int(np.trace(self.confusion))

    @property
    def images(self) -> int:
        return self.labeled + self.unlabeled

    def record(
        self,
        labels: Iterable[int | None],
        predicted: Iterable[int],
        timestamps: Iterable[float],
        window_seconds: int,
    ) -> None:
        """Count classified images; ``labels`` may hold None for unlabelled ones."""
        for label, guess, ts in zip(labels, predicted, timestamps):
            window = self.windows.setdefault(int(ts // window_seconds) * window_seconds, [0, 0, 0])
            window[0] += 1
            if label is None:
                self.unlabeled += 1
            else:
                self.confusion[label, guess] += 1
                window[1] += 1
                window[2] += int(label == guess)
        self._trim_windows()

    def reject(self, kind: str, count: int = 1) -> None:
        self.rejected[kind] = self.rejected.get(kind, 0) + count

    def merge(self, other: Scores) -> Scores:
        """Add ``other`` into self (for summing partitions); returns self."""
        self.confusion += other.confusion
        self.unlabeled += other.unlabeled
        for kind, count in other.rejected.items():
            self.reject(kind, count)
        for start, (images, labeled, correct) in other.windows.items():
            window = self.windows.setdefault(start, [0, 0, 0])
            window[0] += images
            window[1] += labeled
            window[2] += correct
        self._trim_windows()
        return self

    def _trim_windows(self) -> None:
        if len(self.windows) > MAX_WINDOWS:
            for start in sorted(self.windows)[:-MAX_WINDOWS]:
                del self.windows[start]

    def to_dict(self) -> dict[str, Any]:
        return {
            "confusion": self.confusion.tolist(),
            "unlabeled": self.unlabeled,
            "rejected": dict(self.rejected),
            "windows": {str(k): v for k, v in self.windows.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scores:
        confusion = np.asarray(data["confusion"], dtype=np.int64)
        if confusion.shape != (NUM_CLASSES, NUM_CLASSES):
            raise ValueError(f"confusion matrix has shape {confusion.shape}")
        return cls(
            confusion=confusion,
            unlabeled=int(data.get("unlabeled", 0)),
            rejected={str(k): int(v) for k, v in data.get("rejected", {}).items()},
            windows={int(k): [int(x) for x in v] for k, v in data.get("windows", {}).items()},
        )

    def report(self, model_version: str | None) -> dict[str, Any]:
        """The ``GET /accuracy/`` document."""
        support = self.confusion.sum(axis=1)
        diagonal = np.diag(self.confusion)
        labeled = self.labeled
        return {
            "images": self.images,
            "labeled": labeled,
            "correct": self.correct,
            "accuracy": (self.correct / labeled) if labeled else None,
            "rejected": sum(self.rejected.values()),
            "rejected_by_kind": dict(sorted(self.rejected.items())),
            "per_class": {
                name: {
                    "support": int(support[i]),
                    "correct": int(diagonal[i]),
                    "recall": (float(diagonal[i] / support[i]) if support[i] else None),
                }
                for i, name in enumerate(CLASS_NAMES)
            },
            "confusion": self.confusion.tolist(),
            "model_version": model_version,
        }

    def window_series(self, window_seconds: int) -> list[dict[str, Any]]:
        """The ``GET /accuracy/window/`` document: one row per window, oldest first."""
        return [
            {
                "start": start,
                "end": start + window_seconds,
                "images": images,
                "labeled": labeled,
                "correct": correct,
                "accuracy": (correct / labeled) if labeled else None,
            }
            for start, (images, labeled, correct) in sorted(self.windows.items())
        ]
