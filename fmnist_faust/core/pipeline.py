"""Decode/validate -> one batched predict -> outcomes: the transport-agnostic step.

Both adapters (the Faust agent and the Pub/Sub bridge) hand a batch of raw messages to
:func:`classify_batch` and get back one outcome per message, in order: a
:class:`~.contract.Prediction` or an :class:`~.contract.InvalidMessage`. They only
deal with transport concerns (offsets, acks, publishing).

The duplicate rule of the wire contract lives here too (:func:`repeats` and
:meth:`BatchResult.without`), so both backends treat an id counted before the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np

from .contract import DEFAULT_MAX_MESSAGE_BYTES, ImageMessage, InvalidMessage, Prediction, decode_image
from .model import Classifier
from .scores import Scores

Outcome = Prediction | InvalidMessage


@dataclass(frozen=True)
class RawMessage:
    """A message as a transport delivered it."""

    value: bytes | None
    key: bytes | str | None = None
    timestamp: float | None = None  # broker/publish time in epoch seconds (for windows)


@dataclass
class BatchResult:
    """One outcome per message, in order, and the decoded pixels of each valid image
    (``None`` for an invalid message), kept so that ``/recent/`` need not decode again."""

    messages: Sequence[RawMessage]
    outcomes: list[Outcome]
    pixels: list[np.ndarray | None]

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

    def subset(self, keep: Callable[[int], bool]) -> BatchResult:
        """The outcomes whose index satisfies ``keep`` (e.g. not yet applied)."""
        return self.take([i for i in range(len(self.outcomes)) if keep(i)])

    def take(self, indices: Sequence[int]) -> BatchResult:
        """The outcomes at ``indices``, in that order."""
        return BatchResult(
            [self.messages[i] for i in indices], [self.outcomes[i] for i in indices], [self.pixels[i] for i in indices]
        )

    def without(self, repeated: Collection[int]) -> BatchResult:
        """The part of the batch that counts: all but the ``repeated`` indices (see :func:`repeats`).

        A repeat is dropped whole: not published, not scored, not in ``/recent/``, not in
        ``fmnist_images_total``; only ``fmnist_duplicates_total`` counts it.
        """
        return self.subset(lambda i: i not in repeated)


def repeats(keys: Sequence[str | None], counted: Callable[[int, str], bool]) -> set[int]:
    """Indices whose key was counted before (``counted(index, key)``) or occurs earlier in the batch.

    A key is the image id as the backend scopes it; ``None`` (a message the backend does
    not deduplicate) is never a repeat.
    """
    found: set[int] = set()
    first: set[str] = set()
    for index, key in enumerate(keys):
        if key is None:
            continue
        if key in first or counted(index, key):
            found.add(index)
        else:
            first.add(key)
    return found


def classify_batch(
    classifier: Classifier,
    messages: Sequence[RawMessage],
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    clock: Callable[[], float] = time.time,
) -> BatchResult:
    """Validate every message, classify the valid ones in a single predict call."""
    outcomes: list[Outcome | None] = [None] * len(messages)
    pixels: list[np.ndarray | None] = [None] * len(messages)
    valid: list[tuple[int, ImageMessage]] = []
    for index, message in enumerate(messages):
        try:
            image = decode_image(message.value, message.key, max_bytes)
        except InvalidMessage as error:
            outcomes[index] = error
        else:
            valid.append((index, image))
            pixels[index] = image.pixels
    if valid:
        predicted, confidence = classifier.predict(np.stack([image.pixels for _, image in valid]))
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
    return BatchResult(messages, outcomes, pixels)  # type: ignore[arg-type]
