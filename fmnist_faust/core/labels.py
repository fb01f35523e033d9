"""Delayed ground truth: the join of predictions and labels by image id (no transport here).

An image sent without a label is classified and answered at once, and its prediction
waits for its label, which comes on the labels stream; a label that comes first waits for
its image. Both backends keep one :class:`Entry` per image id while it waits (the Kafka
worker in a changelog-backed table per partition, the bridge in its store) and hand
batches to :func:`join_batch`, entries that are due to :func:`expired`; both count what
those return into their scores with :meth:`JoinTally.count_into`. The rule:

- An entry is created when its id is first seen (the image or the label, whichever comes
  first) and lives for the wait ``W`` (``FMNIST_LABEL_WAIT_SECONDS``) from that record's
  time: it is removed, whatever it holds, once the clock passes ``first_seen + W``. So the
  state holds each id for exactly one wait: that is its bound.
- A prediction and a label of one id within its life are *joined*: the image moves from
  ``awaiting_label`` into the confusion matrix, in the window of the moment the pair
  became complete (the label's arrival; the image's, when the label came first).
- At the end of its life, an entry still holding only a prediction counts the image as
  ``label_expired``; one holding only a label counts the label as ``expired``. Neither is
  ever in the accuracy.
- **The first label wins.** A second label for an id whose entry holds a label (waiting or
  joined) is ``repeated`` and changes nothing. A label for an id with no entry that the
  backend has counted an image for (the image carried its own label, or its wait is over)
  is ``late`` and changes nothing. A label for an unknown id waits for its image.
- An image that carries its own label is counted with it at once, as always, and creates no
  entry. A second image for an id whose entry still lives (possible only when the dedupe
  horizon is shorter than the wait) cannot wait too: it counts as ``label_expired`` at once.

The clock is the backend's: on Kafka the newest record time of the partition (images,
labels and the ticks the workers write to move it on), so that a replay decides as the
first pass did; on Pub/Sub the bridge's wall clock against publish times.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from .rollout import LivePart, ModelTally
from .scores import Scores


class Entry(NamedTuple):
    """What is known of one image id while it waits (a named tuple: one per pending id)."""

    first_seen: float  # record time of the first of its image and label
    predicted: int | None = None  # the live model's class, once the image came
    version: str | None = None  # the model version that predicted it
    label: int | None = None  # the first label, once it came

    def deadline(self, wait_s: float) -> float:
        """It is removed once the clock is past this."""
        return self.first_seen + wait_s


class Joined(NamedTuple):
    """A prediction and its label, met."""

    label: int
    predicted: int
    version: str
    at: float  # when the pair became complete: its window
    label_waited: bool  # the label came first (it leaves ``awaiting_image``)


@dataclass
class JoinTally:
    """What one batch (or one expiry) changed in the counts, to add to a score record."""

    joined: list[Joined] = field(default_factory=list)
    awaiting_image: int = 0  # labels that began to wait for their image
    repeated: int = 0
    late: int = 0
    label_expired: Counter[str] = field(default_factory=Counter)  # model version -> images
    labels_expired: int = 0  # labels whose image never came
    rejected: Counter[str] = field(default_factory=Counter)  # error kind -> malformed labels

    def __bool__(self) -> bool:
        return bool(
            self.joined
            or self.awaiting_image
            or self.repeated
            or self.late
            or self.label_expired
            or self.labels_expired
            or self.rejected
        )

    def merge(self, other: JoinTally) -> JoinTally:
        self.joined.extend(other.joined)
        self.awaiting_image += other.awaiting_image
        self.repeated += other.repeated
        self.late += other.late
        self.label_expired.update(other.label_expired)
        self.labels_expired += other.labels_expired
        self.rejected.update(other.rejected)
        return self

    def count_into(self, scores: Scores, tally: ModelTally | None, window_seconds: int) -> None:
        """Add to ``scores`` (and to each model version's part of ``tally``: the version that
        predicted the image, so the live parts keep summing to the totals). Images counted
        awaiting their label by :func:`~.rollout.count_batch` move from there."""
        for item in self.joined:
            scores.join(item.label, item.predicted, item.at, window_seconds)
            if tally is not None:
                _part(tally, item.version).scores.join(item.label, item.predicted, item.at, window_seconds)
                _part(tally, item.version).scores.windows.clear()  # per-version parts keep no windows
            if item.label_waited:
                scores.count_labels("awaiting_image", -1)
        if self.joined:
            scores.count_labels("joined", len(self.joined))
        for version, count in self.label_expired.items():
            scores.expire_waiting(count)
            if tally is not None:
                _part(tally, version).scores.expire_waiting(count)
        for outcome, count in (
            ("awaiting_image", self.awaiting_image - self.labels_expired),
            ("expired", self.labels_expired),
            ("repeated", self.repeated),
            ("late", self.late),
        ):
            if count:
                scores.count_labels(outcome, count)
        for kind, count in self.rejected.items():
            scores.reject_label(kind, count)


def _part(tally: ModelTally, version: str) -> LivePart:
    return tally.live.setdefault(version, LivePart())


class Guess(NamedTuple):
    """A counted image without a label, for :func:`join_batch`."""

    id: str
    predicted: int
    version: str
    at: float  # its record time


class Label(NamedTuple):
    """A decoded label of the labels stream, for :func:`join_batch`."""

    id: str
    label: int
    at: float  # its record time


def join_batch(
    lookup: Callable[[str], Entry | None],
    predictions: Iterable[Guess],
    labels: Iterable[Label],
    known: Callable[[str], bool],
) -> tuple[dict[str, Entry], JoinTally]:
    """Apply the rule to one batch: its predictions first, then its labels, each seeing what
    the ones before it did. ``lookup(id)`` is the id's entry before the batch (None: no
    entry); ``known(id)`` whether the backend counted an image with that id (this batch's
    included). Returns the entries the batch created or changed (id -> new value) and the
    counts; the caller stores both in one step, then removes what :func:`expired` finds."""
    changes: dict[str, Entry] = {}
    tally = JoinTally()

    def entry_of(image_id: str) -> Entry | None:
        return changes[image_id] if image_id in changes else lookup(image_id)

    for image_id, predicted, version, at in predictions:
        entry = entry_of(image_id)
        if entry is None:
            changes[image_id] = Entry(at, predicted, version, None)
        elif entry.predicted is None:
            assert entry.label is not None
            changes[image_id] = entry._replace(predicted=predicted, version=version)
            tally.joined.append(Joined(entry.label, predicted, version, at, True))
        else:  # a second image of a living id: it cannot wait as well
            tally.label_expired[version] += 1
    for image_id, label, at in labels:
        entry = entry_of(image_id)
        if entry is None:
            if known(image_id):
                tally.late += 1
            else:
                changes[image_id] = Entry(at, None, None, label)
                tally.awaiting_image += 1
        elif entry.label is not None:
            tally.repeated += 1
        else:
            assert entry.predicted is not None and entry.version is not None
            changes[image_id] = entry._replace(label=label)
            tally.joined.append(Joined(label, entry.predicted, entry.version, at, False))
    return changes, tally


def expired(entries: Iterable[Entry]) -> JoinTally:
    """The counts of entries removed at the end of their life: a prediction without its label
    is ``label_expired``, a label without its image ``expired``; a joined pair counts nothing."""
    tally = JoinTally()
    for entry in entries:
        if entry.label is None:
            assert entry.version is not None
            tally.label_expired[entry.version] += 1
        elif entry.predicted is None:
            tally.labels_expired += 1
    return tally
