"""Running accuracy: one mergeable, JSON-serialisable score record.

The Faust tables and the Pub/Sub bridge's store both hold :class:`Scores` as plain
dicts (``to_dict``/``from_dict``), and both serve :meth:`Scores.report`, so the two
backends answer ``/accuracy/`` with the same JSON. Per-class support, correct and
recall are derived from the confusion matrix rather than stored twice.

Delayed labels (:mod:`.labels`): an image counted without a label is *awaiting* its
label; a label that joins it later moves it into the confusion matrix (:meth:`Scores.join`,
in the window of the label's arrival), and one that never comes within the wait moves it
to ``label_expired`` (:meth:`Scores.expire_waiting`). So ``images = labeled +
awaiting_label + label_expired`` at every moment. The labels stream's own counts (labels
that joined, wait for their image, expired, came twice, came too late, were rejected) sit
beside them in ``labels`` and ``labels_rejected``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .contract import CLASS_NAMES, NUM_CLASSES

MAX_WINDOWS = 360  # one hour of 10-second windows
# What became of the labels stream's labels (see :mod:`.labels`): joined an image,
# waiting for their image, expired without one, a second label for an id, or a label for
# an image already counted with its label or past its wait.
LABEL_OUTCOMES = ("joined", "awaiting_image", "expired", "repeated", "late")


@dataclass
class Scores:
    """Counts for a set of classified images (a partition, a bridge, or a merge)."""

    confusion: np.ndarray = field(default_factory=lambda: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64))
    awaiting_label: int = 0  # images counted without a label, whose label may still come
    label_expired: int = 0  # images whose label did not come within the wait
    rejected: dict[str, int] = field(default_factory=dict)
    # window start (epoch seconds) -> [images, labeled, correct]; images by when they were
    # classified, labeled/correct by when their label arrived
    windows: dict[int, list[int]] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)  # LABEL_OUTCOMES -> count
    labels_rejected: dict[str, int] = field(default_factory=dict)  # error kind -> labels dead-lettered

    @property
    def unlabeled(self) -> int:
        return self.awaiting_label + self.label_expired

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
        """Count classified images; ``labels`` may hold None for unlabelled ones (they await their label)."""
        for label, guess, ts in zip(labels, predicted, timestamps):
            window = self.windows.setdefault(int(ts // window_seconds) * window_seconds, [0, 0, 0])
            window[0] += 1
            if label is None:
                self.awaiting_label += 1
            else:
                self.confusion[label, guess] += 1
                window[1] += 1
                window[2] += int(label == guess)
        self._trim_windows()

    def join(self, label: int, predicted: int, at: float, window_seconds: int) -> None:
        """An image counted awaiting its label got it: into the confusion matrix, and into the
        window of ``at``, the time the label arrived (or the image, when the label came first)."""
        self.awaiting_label -= 1
        self.confusion[label, predicted] += 1
        window = self.windows.setdefault(int(at // window_seconds) * window_seconds, [0, 0, 0])
        window[1] += 1
        window[2] += int(label == predicted)
        self._trim_windows()

    def expire_waiting(self, count: int) -> None:
        """``count`` images awaiting their label stop waiting: never in the accuracy."""
        self.awaiting_label -= count
        self.label_expired += count

    def count_labels(self, outcome: str, count: int = 1) -> None:
        """Labels of the labels stream by outcome (:data:`LABEL_OUTCOMES`); may be negative (a
        waiting label that joins leaves ``awaiting_image``)."""
        assert outcome in LABEL_OUTCOMES, outcome
        self.labels[outcome] = self.labels.get(outcome, 0) + count

    def reject_label(self, kind: str, count: int = 1) -> None:
        self.labels_rejected[kind] = self.labels_rejected.get(kind, 0) + count

    def reject(self, kind: str, count: int = 1) -> None:
        self.rejected[kind] = self.rejected.get(kind, 0) + count

    def merge(self, other: Scores) -> Scores:
        """Add ``other`` into self (for summing partitions); returns self."""
        self.confusion += other.confusion
        self.awaiting_label += other.awaiting_label
        self.label_expired += other.label_expired
        for kind, count in other.rejected.items():
            self.reject(kind, count)
        for outcome, count in other.labels.items():
            self.count_labels(outcome, count)
        for kind, count in other.labels_rejected.items():
            self.reject_label(kind, count)
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
        data: dict[str, Any] = {
            "confusion": self.confusion.tolist(),
            "awaiting_label": self.awaiting_label,
            "label_expired": self.label_expired,
            "rejected": dict(self.rejected),
            "windows": {str(k): v for k, v in self.windows.items()},
        }
        if self.labels or self.labels_rejected:  # rows stay as they were where no label stream runs
            data["labels"] = dict(self.labels)
            data["labels_rejected"] = dict(self.labels_rejected)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scores:
        confusion = np.asarray(data["confusion"], dtype=np.int64)
        if confusion.shape != (NUM_CLASSES, NUM_CLASSES):
            raise ValueError(f"confusion matrix has shape {confusion.shape}")
        return cls(
            confusion=confusion,
            awaiting_label=int(data.get("awaiting_label", 0)),
            # a record written before labels could wait: its unlabelled images never got one
            label_expired=int(data.get("label_expired", data.get("unlabeled", 0))),
            rejected={str(k): int(v) for k, v in data.get("rejected", {}).items()},
            windows={int(k): [int(x) for x in v] for k, v in data.get("windows", {}).items()},
            labels={str(k): int(v) for k, v in data.get("labels", {}).items()},
            labels_rejected={str(k): int(v) for k, v in data.get("labels_rejected", {}).items()},
        )

    def report(self, model_version: str | None) -> dict[str, Any]:
        """The ``GET /accuracy/`` document."""
        support = self.confusion.sum(axis=1)
        diagonal = np.diag(self.confusion)
        labeled = self.labeled
        outcomes = {outcome: self.labels.get(outcome, 0) for outcome in LABEL_OUTCOMES}
        return {
            "images": self.images,
            "labeled": labeled,
            "correct": self.correct,
            "accuracy": (self.correct / labeled) if labeled else None,
            "awaiting_label": self.awaiting_label,
            "label_expired": self.label_expired,
            "labels": {
                "received": sum(outcomes.values()),
                **outcomes,
                "rejected": sum(self.labels_rejected.values()),
                "rejected_by_kind": dict(sorted(self.labels_rejected.items())),
            },
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
