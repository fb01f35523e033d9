"""Decode/validate -> one batched predict -> outcomes: the transport-agnostic step.

Both adapters (the Faust agent and the Pub/Sub bridge) hand a batch of raw messages to
:func:`classify_batch` and get back one outcome per image, in order: a
:class:`~.contract.Prediction` or an :class:`~.contract.InvalidMessage`. A one-image
message gives one outcome; a batch record gives one per image, or one rejection when the
record itself is malformed; :attr:`BatchResult.sources` maps each outcome back to its
message. The adapters only deal with transport concerns (offsets, acks, publishing).

A message the classifier fails on (a model or code error on that input) must not stop its
batch forever: :func:`classify_isolating` finds it by bisection and returns it as a
``processing_failed`` rejection, which both adapters dead-letter and count like any other.

The duplicate rule of the wire contract lives here too (:func:`repeats` and
:meth:`BatchResult.without`), so both backends treat an id counted before the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .contract import (
    DEFAULT_MAX_BATCH_IMAGES,
    DEFAULT_MAX_MESSAGE_BYTES,
    IMAGE_BYTES,
    PROCESSING_FAILED,
    ImageMessage,
    InvalidMessage,
    Prediction,
    decode_record,
    image_faults,
)
from .drift import pixel_bins
from .model import Classifier
from .scores import Scores

log = logging.getLogger(__name__)

Outcome = Prediction | InvalidMessage
# Most images both adapters hand to one classify_batch call when batch records fill their
# batches (one predict call: ~25 MB of float64); a record is never split, so a call holds at
# most this plus one record.
STEP_IMAGES = 4096


class RawMessage(NamedTuple):
    """A message as a transport delivered it (a named tuple: one is built per message)."""

    value: bytes | None
    key: bytes | str | None = None
    timestamp: float | None = None  # broker/publish time in epoch seconds (for windows)


@dataclass
class BatchResult:
    """One outcome per image, in order, and the decoded pixels of each valid image (``None``
    for a rejection), kept so that ``/recent/`` need not decode again.

    ``messages[i]`` is the message that carried outcome ``i`` (the same one for every image
    of a batch record) and ``sources[i]`` its index among the messages classified; without
    batch records both are one per message (``sources`` defaults to 0, 1, 2...).
    """

    messages: Sequence[RawMessage]
    outcomes: list[Outcome]
    pixels: list[np.ndarray | None]
    sources: list[int] = field(default_factory=list)
    # (outcomes, 2): each image's intensity and spread bin for drift (:func:`.drift.pixel_bins`),
    # -1 where there are no pixels; classify_batch bins the array it predicts on, once.
    pixel_bins: np.ndarray = field(default_factory=lambda: np.empty((0, 2), dtype=np.int64))

    def __post_init__(self) -> None:
        if not self.sources and self.outcomes:
            self.sources = list(range(len(self.outcomes)))
        if len(self.pixel_bins) != len(self.outcomes):
            self.pixel_bins = _binned(self.pixels)

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
            [self.messages[i] for i in indices],
            [self.outcomes[i] for i in indices],
            [self.pixels[i] for i in indices],
            [self.sources[i] for i in indices],
            self.pixel_bins[np.asarray(indices, dtype=np.int64)],
        )

    def without(self, repeated: Collection[int]) -> BatchResult:
        """The part of the batch that counts: all but the ``repeated`` indices (see :func:`repeats`).

        A repeat is dropped whole: not published, not scored, not in ``/recent/``, not in
        ``fmnist_images_total``; only ``fmnist_duplicates_total`` counts it.
        """
        return self.subset(lambda i: i not in repeated)


def _binned(pixels: Sequence[np.ndarray | None]) -> np.ndarray:
    """(len(pixels), 2) drift bins of the images in ``pixels``, -1 for None."""
    bins = np.full((len(pixels), 2), -1, dtype=np.int64)
    present = [i for i, image in enumerate(pixels) if image is not None]
    if present:
        bins[present] = np.column_stack(pixel_bins(np.stack([pixels[i] for i in present])))  # type: ignore[misc]
    return bins


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
    max_images: int = DEFAULT_MAX_BATCH_IMAGES,
) -> BatchResult:
    """Validate every message, expand batch records into their images, and classify every
    valid image in a single predict call (a batch record's pixels are one array already)."""
    carriers: list[RawMessage] = []
    sources: list[int] = []
    outcomes: list[Outcome | None] = []
    pixels: list[np.ndarray | None] = []
    valid = _ValidImages()
    for source, message in enumerate(messages):
        try:
            decoded = decode_record(message.value, message.key, max_bytes, max_images)
        except InvalidMessage as error:
            carriers.append(message)
            sources.append(source)
            outcomes.append(error)
            pixels.append(None)
            continue
        if isinstance(decoded, ImageMessage):
            valid.add_one(len(outcomes), decoded)
            carriers.append(message)
            sources.append(source)
            outcomes.append(None)
            pixels.append(decoded.pixels)
            continue
        count, base = len(decoded.ids), len(outcomes)
        carriers.extend([message] * count)
        sources.extend([source] * count)
        faults = image_faults(decoded)
        if not faults:
            valid.add(base, decoded.ids, decoded.labels, decoded.sent_at, decoded.pixels)
            outcomes.extend([None] * count)
            pixels.extend(decoded.pixels)
            continue
        good = [k for k in range(count) if k not in faults]
        valid.add(
            base,
            [decoded.ids[k] for k in good],
            [decoded.labels[k] for k in good],
            decoded.sent_at,
            decoded.pixels[good],
            [base + k for k in good],
        )
        for k in range(count):
            outcomes.append(faults.get(k))
            pixels.append(None if k in faults else decoded.pixels[k])
    bins = np.full((len(outcomes), 2), -1, dtype=np.int64)
    if valid.ids:
        rows = np.concatenate(valid.rows)
        predicted, confidence = classifier.predict(rows)
        bins[valid.at] = np.column_stack(pixel_bins(rows))
        now, version = clock(), classifier.version
        for index, image_id, label, sent_at, guess, conf in zip(
            valid.at, valid.ids, valid.labels, valid.sent_at, predicted.tolist(), confidence.tolist()
        ):
            latency_ms = None if sent_at is None else max(0.0, (now - sent_at) * 1000.0)
            outcomes[index] = Prediction(image_id, guess, conf, label, version, latency_ms)
    return BatchResult(carriers, outcomes, pixels, sources, bins)  # type: ignore[arg-type]


class ModelFailure(RuntimeError):
    """The classifier fails on a reference image too: the model is broken, not one input.
    Nothing is dead-lettered for it; the adapters hold the batch and retry, as in an outage."""


def classify_isolating(
    classifier: Classifier,
    messages: Sequence[RawMessage],
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    clock: Callable[[], float] = time.time,
    max_images: int = DEFAULT_MAX_BATCH_IMAGES,
) -> BatchResult:
    """:func:`classify_batch`, except that a message whose classification raises comes back
    as one ``InvalidMessage("processing_failed", <the exception>)`` outcome (for a batch
    record: one for the whole record) and the rest of the batch is classified as usual.

    When the batch raises it is halved until the failing messages are alone. A message is
    given up on only if it fails alone twice (so a one-off error dead-letters nothing) while
    the classifier still classifies an all-black reference image; if that fails too, the
    model is broken and :class:`ModelFailure` is raised. Bound: with ``k`` failing messages
    among ``n``, at most ``1 + 2k*ceil(log2 n) + 2k`` predict calls (23 for one among 1,000).
    """

    def classify(part: Sequence[RawMessage]) -> BatchResult:
        return classify_batch(classifier, part, max_bytes, clock, max_images)

    try:
        return classify(messages)
    except Exception as exc:
        log.warning(
            "classifying a batch of %d messages failed (%r); isolating the messages it fails on", len(messages), exc
        )
    parts = _bisected(classify, list(messages), 0)
    failed = sum(
        1 for part in parts for o in part.outcomes if isinstance(o, InvalidMessage) and o.kind == PROCESSING_FAILED
    )
    if failed:
        try:
            classifier.predict(np.zeros((1, IMAGE_BYTES), dtype=np.uint8))
        except Exception as exc:
            raise ModelFailure(f"the model fails on a reference image too ({exc!r})") from exc
        log.warning(
            "%d of %d messages fail classification: dead-lettering them as %s", failed, len(messages), PROCESSING_FAILED
        )
    return _joined(parts)


def _bisected(
    classify: Callable[[Sequence[RawMessage]], BatchResult], messages: list[RawMessage], base: int
) -> list[BatchResult]:
    """``messages``, which failed together once, classified in halves, recursively (a single
    message is tried once more); ``base`` is the index of ``messages[0]`` in the whole
    batch, for the results' ``sources``."""
    if len(messages) == 1:
        try:
            return [_shifted(classify(messages), base)]
        except Exception as exc:
            failure = InvalidMessage(PROCESSING_FAILED, f"classifying this message failed: {exc!r}")
            return [BatchResult(messages, [failure], [None], [base])]
    middle = len(messages) // 2
    parts: list[BatchResult] = []
    for start, half in ((0, messages[:middle]), (middle, messages[middle:])):
        try:
            parts.append(_shifted(classify(half), base + start))
        except Exception:
            parts.extend(_bisected(classify, half, base + start))
    return parts


def _shifted(result: BatchResult, base: int) -> BatchResult:
    if base:
        result.sources = [base + source for source in result.sources]
    return result


def _joined(parts: Sequence[BatchResult]) -> BatchResult:
    return BatchResult(
        [m for part in parts for m in part.messages],
        [o for part in parts for o in part.outcomes],
        [p for part in parts for p in part.pixels],
        [s for part in parts for s in part.sources],
        np.concatenate([part.pixel_bins for part in parts]) if parts else np.empty((0, 2), dtype=np.int64),
    )


@dataclass
class _ValidImages:
    """The images to classify, gathered as parallel lists (no object per image)."""

    at: list[int] = field(default_factory=list)  # outcome index of each image
    ids: list[str] = field(default_factory=list)
    labels: list[int | None] = field(default_factory=list)
    sent_at: list[float | None] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)  # (k, 784) pieces, in order

    def add_one(self, at: int, image: ImageMessage) -> None:
        """One image of the one-image form (the common case: no lists built for it)."""
        self.at.append(at)
        self.ids.append(image.id)
        self.labels.append(image.label)
        self.sent_at.append(image.sent_at)
        self.rows.append(image.pixels.reshape(1, -1))

    def add(
        self,
        base: int,
        ids: list[str],
        labels: list[int | None],
        sent_at: float | None,
        rows: np.ndarray,
        at: list[int] | None = None,
    ) -> None:
        self.at.extend(range(base, base + len(ids)) if at is None else at)
        self.ids.extend(ids)
        self.labels.extend(labels)
        self.sent_at.extend([sent_at] * len(ids))
        self.rows.append(rows)
