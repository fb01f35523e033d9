"""Decode/validate -> one batched predict -> outcomes: the transport-agnostic step.

Both adapters (the Faust agent and the Pub/Sub bridge) hand a batch of raw messages to
:func:`classify_batch` and get back one outcome per message, in order: a
:class:`~.contract.Prediction` or an :class:`~.contract.InvalidMessage`. They only
deal with transport concerns (offsets, acks, publishing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np

from .contract import DEFAULT_MAX_MESSAGE_BYTES, ImageMessage, InvalidMessage, Prediction, decode_image
from .model import Classifier
from .scores import Scores

Outcome = Union[Prediction, InvalidMessage]


@dataclass(frozen=True)
class RawMessage:
    """A message as a transport delivered it."""

    value: bytes | None
    key: bytes | str | None = None
    timestamp: float | None = None  # broker/publish time in epoch seconds (for windows)


@dataclass
class BatchResult:
    messages: Sequence[RawMessage]
    outcomes: list[Outcome]

    @property
    def predictions(self) -> list[Prediction]:
        return [o for o in self.outcomes if isinstance(o, Prediction)]

    @property
    def rejections(self) -> list[tuple[RawMessage, InvalidMessage]]:
        return [(m, o) for m, o in zip(self.messages, self.outcomes) if isinstance(o, InvalidMessage)]

    def apply_to(self, scores: Scores, window_seconds: int, now: float | None = None) -> None:
        """Count this batch (or the part of it the caller selected) into ``scores``."""
        now = time.time() if now is None else now
        labels, guesses, stamps = [], [], []
        for message, outcome in zip(self.messages, self.outcomes):
            if isinstance(outcome, Prediction):
                labels.append(outcome.label)
                guesses.append(outcome.predicted)
                stamps.append(message.timestamp if message.timestamp is not None else now)
            else:
                scores.reject(outcome.kind)
        scores.record(labels, guesses, stamps, window_seconds)

    def subset(self, keep: Callable[[int], bool]) -> "BatchResult":
        """The outcomes whose index satisfies ``keep`` (e.g. not yet applied)."""
        indices = [i for i in range(len(self.outcomes)) if keep(i)]
        return BatchResult([self.messages[i] for i in indices], [self.outcomes[i] for i in indices])


def classify_batch(
    classifier: Classifier,
    messages: Sequence[RawMessage],
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    clock: Callable[[], float] = time.time,
) -> BatchResult:
    """Validate every message, classify the valid ones in a single predict call."""
    outcomes: list[Outcome | None] = [None] * len(messages)
    valid: list[tuple[int, ImageMessage]] = []
    for index, message in enumerate(messages):
        try:
            valid.append((index, decode_image(message.value, message.key, max_bytes)))
        except InvalidMessage as error:
            outcomes[index] = error
    if valid:
        pixels = np.stack([image.pixels for _, image in valid])
        predicted, confidence = classifier.predict(pixels)
        now = clock()
        for (index, image), guess, conf in zip(valid, predicted.tolist(), confidence.tolist()):
            latency = None if image.sent_at is None else max(0.0, (now - image.sent_at) * 1000.0)
            outcomes[index] = Prediction(
                id=image.id,
                predicted=guess,
                confidence=conf,
                label=image.label,
                model_version=classifier.version,
                latency_ms=latency,
            )
    return BatchResult(messages, outcomes)  # type: ignore[arg-type]
