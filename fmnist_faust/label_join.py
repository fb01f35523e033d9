"""The classify agent's half of delayed labels: one batch's join step per partition, and the
ticks that move a quiet partition's clock on.

Labels partition ``p`` reaches the classify agent through the same channel as images
partition ``p`` (:mod:`.topics`), so one batch at a time changes the partition's entries
(:mod:`.join_state`) and its score row, in the order that makes the row exact (see
:mod:`.agents`): the batch applies :func:`~.core.labels.join_batch` to its unlabelled
predictions and its labels, moves the partition's clock to its newest record time and
removes what that ends (:func:`join_step`), writes its changed entries as a chunk and
waits for the ack, and only then writes the row, whose counts, labels offset, clock and
chain head change together. A batch read again after a failure starts from the row's
state, rebuilt from its chain when this process's entries belong to another row
(:func:`state_for`).

The clock is record time, so that a replay decides what the first pass did. When nothing
arrives on a partition, nothing would move it: every :data:`TICK_EVERY_S` a worker writes a
tick (``core.contract.TICK_VALUE``) to labels partition ``p`` of each partition it owns
whose next entry's life has ended by its own clock; the tick's record time moves the
partition's clock when the agent reads it, like any record.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

from .core.contract import TICK_VALUE, InvalidMessage, decode_label
from .core.labels import Guess, JoinTally, Label, expired, join_batch
from .core.pipeline import RawMessage
from .faust_app import app, settings
from .join_state import PartitionJoin, new_token
from .tables import RowJoin, join_chunks, row_join, send_chunks, tombstone_chunks
from .topics import labels_topic

log = logging.getLogger(__name__)
WAIT_S = settings.pipeline.label_wait_s
# How often quiet partitions get a tick: a tenth of the wait, 1-30 s; an entry expires at
# most about this long after its life ended, when nothing else moves its partition's clock.
TICK_EVERY_S = min(30.0, max(1.0, WAIT_S / 10))

states: dict[int, PartitionJoin] = {}


class JoinStep(NamedTuple):
    """What one batch did to one partition's label-join state, to count into its row."""

    tally: JoinTally
    row: RowJoin  # the row's new head, clock and stamp
    rejections: list[tuple[RawMessage, InvalidMessage]]  # malformed labels, for the DLQ


def state_for(partition: int, stamp: str | None, in_flight: bool) -> PartitionJoin:
    """The entries of ``partition`` as of the row stamped ``stamp``: the one in flight, else
    the partition's row. Entries that a failed batch, a rebalance or another worker's row
    left behind are rebuilt from the row's chain."""
    state = states.get(partition)
    if state is None:
        state = states[partition] = PartitionJoin(WAIT_S)
    if state.stamp != stamp:
        if in_flight:  # the batch in flight moved them last: nothing else may have
            raise RuntimeError(f"partition {partition}: label-join state {state.stamp} is not the batch in flight's")
        row = row_join(partition)
        chain = join_chunks.chain(partition, row.head)
        state.rebuild(chain, row.head, row.clock, row.stamp)
        log.info(
            "partition %d: label-join state rebuilt from %d chunks: %d ids waiting or joined",
            partition,
            len(chain),
            len(state),
        )
    return state


def decode_labels(
    messages: Sequence[RawMessage], max_bytes: int, now: float
) -> tuple[list[Label], list[tuple[RawMessage, InvalidMessage]]]:
    """The labels among ``messages`` (ticks skipped) and the malformed ones with their faults."""
    labels: list[Label] = []
    rejections: list[tuple[RawMessage, InvalidMessage]] = []
    for message in messages:
        try:
            decoded = decode_label(message.value, message.key, max_bytes)
        except InvalidMessage as error:
            rejections.append((message, error))
            continue
        if decoded is not None:
            at = message.timestamp if message.timestamp is not None else now
            labels.append(Label(decoded.id, decoded.label, at))
    return labels, rejections


async def join_step(
    partition: int,
    stamp: str | None,
    in_flight: bool,
    guesses: list[Guess],
    label_messages: Sequence[RawMessage],
    newest: float,
    known: Callable[[str], bool],
) -> tuple[JoinStep, list[Awaitable[Any]]]:
    """One batch's join of ``partition`` (``newest``: its newest record time there); returns
    the step and the acks of its chunk and tombstones, to await before the row."""
    state = state_for(partition, stamp, in_flight)
    labels, rejections = decode_labels(label_messages, settings.pipeline.max_message_bytes, time.time())
    clock = max(state.clock, newest)
    changes, tally = join_batch(state.get, guesses, labels, known)
    state.apply(changes)
    tally.merge(expired(state.expire(clock)))
    tally.rejected.update(Counter(error.kind for _, error in rejections))
    kept = [(image_id, entry) for image_id, entry in changes.items() if state.entries.get(image_id) is entry]
    head = state.head
    acks: list[Awaitable[Any]] = []
    if kept:
        head, acks = await send_chunks(partition, clock, state.head, kept)
    # Chunks older than a wait before the clock of the last row written hold nothing any row needs.
    acks += await tombstone_chunks(partition, row_join(partition).clock - WAIT_S)
    state.head, state.clock, state.stamp = head, clock, new_token()
    return JoinStep(tally, RowJoin(head, clock, state.stamp), rejections), acks


_ticked: dict[int, float] = {}  # partition -> when this worker last sent it a tick


@app.timer(TICK_EVERY_S)
async def tick_quiet_partitions() -> None:
    """A tick to each owned partition where an entry's life ended by this worker's clock."""
    from .agents import owned_partitions

    if labels_topic is None:  # no delayed labels read here (exactly_once)
        return
    now = time.time()
    topic = labels_topic.get_topic_name()
    for partition in sorted(owned_partitions()):
        state = states.get(partition)
        due = state.next_deadline() if state is not None else None
        if due is None or due >= now or _ticked.get(partition, float("-inf")) > now - TICK_EVERY_S:
            continue
        try:
            await app.producer.send(topic, None, TICK_VALUE, partition, None, None)
        except Exception as exc:  # the broker is away: the next tick tries again
            log.debug("could not send a tick to %s partition %d: %r", topic, partition, exc)
            continue
        _ticked[partition] = now
