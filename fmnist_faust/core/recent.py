"""The most recent misclassified images, for the dashboard's thumbnail strip.

Kept in memory only (per worker / bridge process): it is a view of the stream, not a
score, so it need not survive restarts.
"""

from __future__ import annotations

import base64
import threading
from collections import deque
from typing import Any

from .contract import CLASS_NAMES, Prediction
from .pipeline import BatchResult


class RecentMistakes:
    """A bounded, thread-safe ring buffer of wrong predictions with their pixels."""

    def __init__(self, size: int = 24) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add_batch(self, result: BatchResult) -> None:
        """Keep the batch's wrong predictions, with the pixels the pipeline decoded (only the
        last ones the buffer can hold are encoded: the others would be pushed out at once)."""
        wrong: list[tuple[Prediction, Any]] = []
        for outcome, pixels in zip(reversed(result.outcomes), reversed(result.pixels)):
            if isinstance(outcome, Prediction) and outcome.correct is False and pixels is not None:
                wrong.append((outcome, pixels))
                if len(wrong) == self._items.maxlen:
                    break
        for outcome, pixels in reversed(wrong):
            item = {
                "id": outcome.id,
                "label": outcome.label,
                "label_name": CLASS_NAMES[outcome.label] if outcome.label is not None else None,
                "predicted": outcome.predicted,
                "predicted_name": CLASS_NAMES[outcome.predicted],
                "confidence": round(outcome.confidence, 4),
                "pixels": base64.b64encode(pixels.tobytes()).decode("ascii"),
            }
            with self._lock:
                self._items.append(item)

    def to_list(self) -> list[dict[str, Any]]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._items))
