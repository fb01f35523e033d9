"""The classify agent: a thin Kafka adapter over :func:`core.pipeline.classify_batch`.

The images stream delivers whole fetches (:mod:`.fetches`) and a batch is what has been
fetched (:mod:`.batching`). Per batch: keep the records this worker still owns (its current
assignment and generation), skip records a table row already covers (replay after a crash),
classify the rest in one predict call, publish predictions and dead letters and wait for the broker
to ack them, then write each partition's score row (offset-stamped). The consumer
commits and resumes at each row's offset + 1 (:mod:`.offsets`), so an image whose batch
failed or was cut short by a rebalance is read again, and nothing is counted twice.
A distinct message re-using an id already counted in its partition is neither counted
nor published again (the core's duplicate rule; see ``tables.seen_table``).
Each batch is classified by one snapshot of the live (and shadow) models (:mod:`.rollout`)
and counted under that live version in the same row (``core.rollout.count_batch``).

A record the model fails on is found by the core and dead-lettered as ``processing_failed``
(``core.pipeline.classify_isolating``), so its partition moves on; a broken model, or a
broker that does not confirm, makes the batch be read again, never dead-lettered.

Batch records (many images in one record) are expanded by the core; offsets and rows stay
per record (a record is counted whole, in one step), marks and the duplicate rule per image
in the record's partition. A batch holding more than :data:`STEP_IMAGES` images
is processed in consecutive steps (:func:`image_steps`), so one predict call and one batch
of sends stay bounded whatever the records hold.

Delayed labels come through the same channel (labels partition ``p`` with images partition
``p``): a batch takes the fetches of both, and per partition its join step
(:mod:`.label_join`) runs after the duplicate rule on the images that count; the row
then holds both offsets, the counts and the join state's head together. The batch in
flight reads as applied for labels too, and its join state is the one the next batch
moves on.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NamedTuple

from aiokafka import TopicPartition
from faust.exceptions import ConsumerNotStarted
from faust.types import TP
from mode import Service

from . import metrics, partition_guard
from .batch_send import send_batched
from .batching import batches
from .core.contract import InvalidMessage, Prediction, dead_letter_attributes, estimated_images
from .core.health import FailingBatches
from .core.labels import Guess
from .core.pipeline import STEP_IMAGES, BatchResult, RawMessage, classify_isolating, repeats
from .core.recent import RecentMistakes
from .core.rollout import count_batch, shadow_predict
from .faust_app import app, exit_now, settings
from .fetches import Fetch
from .kafka_admin import ensure_topics
from .label_join import JoinStep, join_step
from .offsets import read_again_on_clear
from .progress import Progress
from .recovery import hooks as recovery_hooks
from .rollout import apply_pointer, current_models, load_default, read_pointer
from .tables import (
    counted_at,
    expire_marks,
    expire_records,
    labels_offset,
    mark_counted,
    mark_records,
    new_row,
    read_row,
    read_tally,
    resend_row,
    row_join,
    row_offset,
    row_record,
    store_row,
)
from .topics import dlq_topic, images_topic, inputs_topic, labels_topic, predictions_topic
from .transactions import FenceFailed, PartitionProducers, Record, commit, is_fatal

log = logging.getLogger(__name__)
recent_mistakes = RecentMistakes()
# How long a batch waits for the broker to confirm its sends before it gives up and is read
# again: half the consumer session timeout, so a hung broker cannot hold a batch (and the
# rebalance waiting for it) for the producer's 20-minute request timeout.
PUBLISH_TIMEOUT_S = settings.kafka.session_timeout_s / 2
RETRY_PAUSE_S = 1.0
# A crashed agent leaves a Faust worker up and idle (faust-streaming #175): the worker exits
# with this status at once instead, so a supervisor restarts it.
EXIT_AGENT_CRASHED = 3
# Fault injection for tests and drills (docs: Operations): the classify agent raises once it
# has taken this many records, as a bug in it would.
_CRASH_AGENT_AFTER = settings.faults.crash_agent_after


progress = Progress(settings.kafka.stall_seconds)
# Liveness turns red when batches keep failing (an outage, a broken model) this long.
failing_batches = FailingBatches(settings.kafka.stall_seconds)
# exactly_once: the transactional producer of each owned images partition (None: at_least_once)
producers = PartitionProducers(settings) if settings.kafka.exactly_once else None
# an owned partition stayed without a transactional producer past the session, or its fence failed
EXIT_UNFENCED = 5


async def fence_or_exit(assigned: set[TP]) -> None:
    """Fence the assigned partitions' transactional ids before recovery, or stop the worker
    (with one line) when that cannot be done within the bound: never a rebalance waiting on it."""
    assert producers is not None
    try:
        await producers.fence(assigned)
    except FenceFailed as exc:
        log.critical(
            "could not fence the transactional ids of the assigned images partitions within %.0f s (%s); "
            "exiting with status %d so that the group reassigns them",
            producers.fence_bound_s,
            exc,
            EXIT_UNFENCED,
        )
        exit_now(EXIT_UNFENCED)


if producers is not None:
    recovery_hooks.before_recovery = fence_or_exit  # fence first, then read the changelogs


@app.service
class TransactionalProducers(Service):
    """Closes the transactional producers when the worker stops."""

    async def on_stop(self) -> None:
        if producers is not None:
            await producers.stop()


class Lifecycle:
    """What readiness reads that Faust does not keep: the startup steps done."""

    prepared = False  # model verified, topics created, rollout pointer applied


lifecycle = Lifecycle()


async def prepare() -> None:
    """Before the worker starts anything (web views included, see ``faust_app.App.on_start``):
    verify and load the default model (a bad one stops the worker at once, not at the first
    image), create images, predictions and DLQ with the configured partitions, refuse an
    images topic with more partitions than the changelogs (:mod:`.partition_guard`), read the
    rollout pointer and load the versions it names, retrying while the broker does not
    answer. So a worker that answers has its topics and the promoted models."""
    try:
        load_default()
    except Exception as exc:
        log.critical("cannot load the model: %s", exc)
        raise
    while True:
        try:
            await ensure_topics(settings)
            await partition_guard.check_at_start()
            state = await read_pointer()
            break
        except Exception as exc:
            log.warning("creating the topics or reading the model pointer failed (%r); retrying in 2 s", exc)
            await asyncio.sleep(2.0)
    await apply_pointer(state)
    lifecycle.prepared = True


@app.agent(inputs_topic)
async def classify(stream: Any) -> None:
    queue = stream.channel.queue
    flight = InFlight()
    taken = 0
    try:
        async for fetches in batches(stream.events(), settings.pipeline.batch_size, lambda: not queue.empty()):
            if _CRASH_AGENT_AFTER:
                taken += sum(len(fetch.offsets) for fetch in fetches)
                if taken >= _CRASH_AGENT_AFTER:
                    raise RuntimeError(f"injected fault (FMNIST_FAULT_CRASH_AGENT_AFTER={_CRASH_AGENT_AFTER})")
            await partition_guard.check_partitions({fetch.partition for fetch in fetches})
            for step in image_steps(fetches, STEP_IMAGES):
                if not await process_fetches(step, flight):  # the rest of the batch is read again too
                    await rewind({fetch.tp for fetch in fetches}, "a part of its batch failed")
                    break
    except Exception as exc:
        if not app.should_stop:
            _exit_crashed(exc)
        raise
    finally:
        flight.abandon()  # the agent stops: a batch not yet counted is read again by the next owner


def _exit_crashed(exc: BaseException) -> None:
    """What the agent had not counted is read again by the next owner (the rows decide)."""
    log.critical(
        "the classify agent crashed (%r); exiting with status %d so that a supervisor restarts the worker",
        exc,
        EXIT_AGENT_CRASHED,
        exc_info=exc,
    )
    exit_now(EXIT_AGENT_CRASHED)


async def _failed(tps: Iterable[TP], records: int, exc: BaseException) -> None:
    """The broker hung or failed: read the batch again, never skip it."""
    failing_batches.failed()
    log.error("a batch of %d records failed (%r); reading it again from the last counted offsets", records, exc)
    await rewind(set(tps), f"batch failed: {exc!r}")
    await asyncio.sleep(RETRY_PAUSE_S)


def image_steps(fetches: list[Fetch], limit: int) -> list[list[Fetch]]:
    """``fetches`` cut, in order, into runs of at most ``limit`` images (by each record's size:
    :func:`~.core.contract.estimated_images`); a record is never split."""
    steps: list[list[Fetch]] = [[]]
    images = 0
    for fetch in fetches:
        start = 0
        for index, message in enumerate(fetch.messages):
            size = estimated_images(message.value)
            if images + size > limit and (steps[-1] or index > start):
                if index > start:
                    steps[-1].append(fetch.cut(start, index))
                steps.append([])
                images, start = 0, index
            images += size
        steps[-1].append(fetch.cut(start) if start else fetch)
    return steps


@app.timer(5.0)
async def watch_progress() -> None:
    """Log and re-read every assigned partition where images wait and none is counted."""
    if producers is not None:
        unfenced = producers.unfenced_too_long(owned_partitions(), settings.kafka.session_timeout_s)
        if unfenced:
            log.critical(
                "images partitions %s are assigned here but have had no transactional producer for %.0f s "
                "(fenced without a new assignment); exiting with status %d so that the group reassigns them",
                unfenced,
                settings.kafka.session_timeout_s,
                EXIT_UNFENCED,
            )
            exit_now(EXIT_UNFENCED)
    lags = partition_lags()
    if lags is None:
        return
    for partition in progress.check(lags):
        log.warning(
            "partition %d: %d images waiting, none counted for %.0f s; reading again from offset %d",
            partition,
            lags[partition],
            progress.bound_s,
            row_offset(partition) + 1,
        )
        await rewind([TP(images_topic.get_topic_name(), partition)], "stalled")
    metrics.STALLED.set(len(progress.stalled))


def partition_lags() -> dict[int, int] | None:
    """Images waiting per assigned images partition: the highwater (as of the consumer's last
    fetch) minus the next offset the score table has not applied. None before the consumer
    has started or fetched."""
    topic = images_topic.get_topic_name()
    try:
        consumer = app.consumer
        partitions = [tp for tp in consumer.assignment() if tp.topic == topic]
        highwaters = {tp: consumer.highwater(tp) for tp in partitions}
    except (ConsumerNotStarted, AssertionError):  # not started, or partition revoked meanwhile
        return None
    known = {tp: hw for tp, hw in highwaters.items() if hw is not None}
    if partitions and not known:
        return None
    return {tp.partition: max(0, hw - (row_offset(tp.partition) + 1)) for tp, hw in known.items()}


async def rewind(tps: Iterable[TP], why: str) -> None:
    """Seek each partition back to its first uncounted offset (see :mod:`.offsets`)."""
    consumer = app.consumer
    assigned = _assigned()
    for tp in tps:
        if assigned is None or tp in assigned:
            await consumer.rewind(tp, why)
            gap_guard.rewound(tp)


async def _read_again_cleared(tps: set[TP]) -> None:
    await rewind(tps, "Faust cleared its fetched records from the stream's queue")


read_again_on_clear(_read_again_cleared)


def _assigned() -> set[TP] | None:
    """This worker's assigned partitions; None when no consumer runs (agent test context)."""
    try:
        return set(app.consumer.assignment())
    except ConsumerNotStarted:
        return None


def owned_partitions() -> set[int]:
    """The images partitions this worker is assigned (empty when no consumer runs)."""
    topic = images_topic.get_topic_name()
    return {tp.partition for tp in _assigned() or () if tp.topic == topic}


def _owned(fetches: list[Fetch], generation: int) -> list[Fetch]:
    """The fetches of partitions this worker owns in ``generation``.

    Records fetched in an earlier generation, or of a partition since revoked, are not ours
    to count: the owner reads them from its row's offset (fencing a zombie's batch).
    """
    assigned = _assigned()
    return [f for f in fetches if f.generation == generation and (assigned is None or f.tp in assigned)]


class GapGuard:
    """Stops a batch from counting past input offsets it never saw.

    A partition's events must continue from its row's offset + 1 without holes. A hole can
    be images the consumer dropped (then the partition is read again from the hole) or
    offsets that hold no image records (transaction markers, compaction): those come back
    the same after the re-read, and are accepted the second time. Right after a re-read
    (:meth:`rewound`), events fetched before it still arrive and show holes: expected, so
    those are logged at INFO rather than WARNING.
    """

    QUIET_AFTER_REWIND_S = 10.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cut: dict[TP, set[tuple[int, int]]] = defaultdict(set)
        self._rewound_at: dict[TP, float] = {}

    def rewound(self, tp: TP) -> None:
        self._rewound_at[tp] = self._clock()

    def contiguous(self, tp: TP, applied: int, offsets: list[int]) -> int:
        """How many of ``offsets`` (sorted) can be counted after ``applied``."""
        expected = applied + 1
        for index, offset in enumerate(offsets):
            if offset != expected and (expected, offset) not in self._cut[tp]:
                self._cut[tp].add((expected, offset))
                recent = self._clock() - self._rewound_at.get(tp, float("-inf")) < self.QUIET_AFTER_REWIND_S
                log.log(
                    logging.INFO if recent else logging.WARNING,
                    "%s partition %d: offsets %d..%d were not received; reading again from %d",
                    tp.topic,
                    tp.partition,
                    expected,
                    offset - 1,
                    expected,
                )
                return index
            expected = offset + 1
        self._cut.pop(tp, None)
        return len(offsets)


gap_guard = GapGuard()


class Uncounted(NamedTuple):
    """The records of a batch that continue their partitions' rows, as parallel lists (those
    of one topic: images, or labels)."""

    partitions: list[int]
    offsets: list[int]
    messages: list[RawMessage]
    last_offsets: dict[int, int]  # partition -> its last offset here: where its row moves to


def _is_labels(tp: TP) -> bool:
    return labels_topic is not None and tp.topic == settings.topics.labels


def _row_offset_of(tp: TP) -> int:
    """The last applied offset of ``tp`` by its partition's row (images or labels)."""
    return labels_offset(tp.partition) if _is_labels(tp) else row_offset(tp.partition)


class Sent(NamedTuple):
    """A batch classified and published, to be counted once the broker confirms it."""

    generation: int
    uncounted: Uncounted
    result: BatchResult
    partitions: list[int]  # of each outcome's record
    duplicates: set[int]
    counted: BatchResult
    shadow: Any
    version: str
    acks: list[Awaitable[Any]]  # at_least_once: the sends to wait for before counting
    labels: Uncounted = Uncounted([], [], [], {})
    joins: dict[int, JoinStep] = {}  # partition -> its label-join step (at_least_once)
    marks: dict[int, list[Record]] = {}  # exactly_once: partition -> seen-id records of its transaction

    @property
    def tps(self) -> set[TP]:
        images, labels = images_topic.get_topic_name(), settings.topics.labels
        return {TP(images, partition) for partition in set(self.uncounted.partitions)} | {
            TP(labels, partition) for partition in set(self.labels.partitions)
        }


class InFlight:
    """At most one batch that is sent but not yet counted, so the next batch is classified and
    sent while the broker confirms this one (its wait was half of a batch's time).

    The next batch reads the one in flight as counted (:meth:`applied`): its records are
    not replays, holes or first sightings of their ids, and its label-join state is the one
    to move on (:meth:`join_stamp`). So when the one in flight fails, the next one is not
    counted either: both are read again from the last counted offsets.
    """

    def __init__(self) -> None:
        self._task: asyncio.Task[bool] | None = None
        self._offsets: dict[tuple[bool, int], int] = {}  # (labels?, partition) -> last offset
        self._stamps: dict[int, str | None] = {}  # partition -> the stamp its row will have

    def applied(self, tp: TP, row_offset: int) -> int:
        return max(row_offset, self._offsets.get((_is_labels(tp), tp.partition), -1))

    def join_stamp(self, partition: int) -> tuple[str | None, bool]:
        """The stamp of the state the next batch moves on for ``partition``, and whether it is
        the batch in flight's (else the partition's row's)."""
        if partition in self._stamps:
            return self._stamps[partition], True
        return row_join(partition).stamp, False

    def start(self, sent: Sent) -> None:
        self._offsets = {(False, p): o for p, o in sent.uncounted.last_offsets.items()}
        self._offsets.update({(True, p): o for p, o in sent.labels.last_offsets.items()})
        self._stamps = {p: step.row.stamp for p, step in sent.joins.items()}
        self._task = asyncio.ensure_future(_finish(sent) if producers is None else _commit(sent))

    async def settle(self) -> bool:
        """Wait for the batch in flight to be counted; False if it was not."""
        task, self._task, self._offsets, self._stamps = self._task, None, {}, {}
        return True if task is None else await task

    def abandon(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._task, self._offsets, self._stamps = None, {}, {}


async def process_fetches(fetches: list[Fetch], flight: InFlight) -> bool:
    """Classify and publish one batch of fetched records, and count it once the broker has
    confirmed it and the batch before it was counted. False when this batch (or the one in
    flight, which it builds on) failed and is to be read again."""
    generation = app.consumer_generation_id
    owned = _owned(fetches, generation)
    if len(owned) < len(fetches):
        log.info(
            "dropped %d records of an older assignment: their partitions' owners read them again",
            sum(len(f.offsets) for f in fetches) - sum(len(f.offsets) for f in owned),
        )
    applied = {tp: flight.applied(tp, _row_offset_of(tp)) for tp in {f.tp for f in owned}}
    uncounted, labels, gaps = _uncounted(owned, applied)
    sent = None
    if uncounted.offsets or labels.offsets:
        try:
            sent = await _send(uncounted, labels, applied, generation, flight)
        except Exception as exc:
            await flight.settle()
            await _failed({f.tp for f in fetches}, len(uncounted.offsets) + len(labels.offsets), exc)
            return False
    if not await flight.settle():
        if sent is not None:  # built on the failed batch: read again with it
            await rewind(sent.tps, "the batch before it failed")
        return False
    if sent is not None:
        flight.start(sent)
    if gaps:
        await rewind(gaps, "hole in the received offsets")
    return True


def _uncounted(fetches: list[Fetch], applied: dict[TP, int]) -> tuple[Uncounted, Uncounted, set[TP]]:
    """Per partition, the records after its row's offset that continue it without a hole
    (images, labels), and the partitions cut short by one.

    A partition's fetches are merged by offset: after a rewind, records fetched before it
    and the same offsets read again can both be in one batch (one offset is one record)."""
    by_partition: dict[TP, list[Fetch]] = defaultdict(list)
    for fetch in fetches:
        by_partition[fetch.tp].append(fetch)
    images, labels = Uncounted([], [], [], {}), Uncounted([], [], [], {})
    cut: set[TP] = set()
    skipped = 0
    for tp, parts in by_partition.items():
        offsets, messages = _merged(parts)
        after = applied[tp]
        first = bisect.bisect_right(offsets, after)
        skipped += first
        offsets, messages = offsets[first:], messages[first:]
        count = gap_guard.contiguous(tp, after, offsets)
        if count < len(offsets):
            cut.add(tp)
        out = labels if _is_labels(tp) else images
        if count:
            out.last_offsets[tp.partition] = offsets[count - 1]
        out.partitions.extend([tp.partition] * count)
        out.offsets.extend(offsets[:count])
        out.messages.extend(messages[:count])
    if skipped:
        log.info("skipped %d replayed records already counted", skipped)
    return images, labels, cut


def _merged(parts: list[Fetch]) -> tuple[list[int], list[RawMessage]]:
    """One partition's records of several fetches, sorted by offset, each offset once."""
    if len(parts) == 1:
        return parts[0].offsets, parts[0].messages
    if all(a.offsets[-1] < b.offsets[0] for a, b in zip(parts, parts[1:])):
        return [o for p in parts for o in p.offsets], [m for p in parts for m in p.messages]
    by_offset: dict[int, RawMessage] = {}
    for part in parts:
        for offset, message in zip(part.offsets, part.messages):
            by_offset.setdefault(offset, message)
    offsets = sorted(by_offset)
    return offsets, [by_offset[o] for o in offsets]


async def _send(
    uncounted: Uncounted, labels: Uncounted, applied: dict[TP, int], generation: int, flight: InFlight
) -> Sent:
    """Classify the images, drop repeated ids (marking the others), join the unlabelled ones and
    the labels per partition, and publish the outcomes and dead letters (at_least_once); with
    exactly_once (no delayed labels there), publishing is left to the batch's transactions."""
    models = current_models()
    pipeline = settings.pipeline
    result, shadow = BatchResult([], [], []), None
    if uncounted.messages:
        with metrics.PREDICT_SECONDS.time():
            result = classify_isolating(
                models.live, uncounted.messages, pipeline.max_message_bytes, max_images=pipeline.max_batch_images
            )
            shadow = shadow_predict(models.shadow, result)
    partitions = [uncounted.partitions[source] for source in result.sources]  # of each image's record
    offsets = [uncounted.offsets[source] for source in result.sources]
    images_applied = {tp.partition: offset for tp, offset in applied.items() if not _is_labels(tp)}
    version = models.live.version
    if producers is not None:
        duplicates, records = await _duplicate_ids_records(partitions, offsets, result, images_applied)
        counted = result.without(duplicates)
        return Sent(generation, uncounted, result, partitions, duplicates, counted, shadow, version, [], marks=records)
    duplicates, marks = await _duplicate_ids(partitions, offsets, result, images_applied)
    counted = result.without(duplicates)
    joins: dict[int, JoinStep] = {}
    join_acks: list[Awaitable[Any]] = []
    if labels_topic is not None:
        joins, join_acks = await _join(partitions, result, duplicates, labels, images_applied, version, flight)
    rejected_labels = [rejection for step in joins.values() for rejection in step.rejections]
    published = await asyncio.wait_for(_publish(counted, rejected_labels), PUBLISH_TIMEOUT_S)
    acks = published + marks + join_acks
    return Sent(
        generation,
        uncounted,
        result,
        partitions,
        duplicates,
        counted,
        shadow,
        version,
        acks,
        labels,
        joins,
    )


async def _join(
    partitions: list[int],
    result: BatchResult,
    duplicates: set[int],
    labels: Uncounted,
    images_applied: dict[int, int],
    version: str,
    flight: InFlight,
) -> tuple[dict[int, JoinStep], list[Awaitable[Any]]]:
    """Each partition's label-join step: its counted images without a label, its labels, its
    clock moved to its newest record time (see :mod:`.label_join`)."""
    now = time.time()
    guesses: dict[int, list[Guess]] = defaultdict(list)
    counted_ids: dict[int, set[str]] = defaultdict(set)
    newest: dict[int, float] = {}
    for index, (partition, message, outcome) in enumerate(zip(partitions, result.messages, result.outcomes)):
        at = message.timestamp if message.timestamp is not None else now
        newest[partition] = max(newest.get(partition, at), at)
        if index in duplicates or not isinstance(outcome, Prediction):
            continue
        counted_ids[partition].add(outcome.id)
        if outcome.label is None:
            guesses[partition].append(Guess(outcome.id, outcome.predicted, version, at))
    label_messages: dict[int, list[RawMessage]] = defaultdict(list)
    for partition, message in zip(labels.partitions, labels.messages):
        label_messages[partition].append(message)
        at = message.timestamp if message.timestamp is not None else now
        newest[partition] = max(newest.get(partition, at), at)
    steps: dict[int, JoinStep] = {}
    acks: list[Awaitable[Any]] = []
    for partition in sorted(newest):
        stamp, in_flight = flight.join_stamp(partition)
        applied = images_applied.get(partition)
        if applied is None:  # only labels of this partition here: its images as applied so far
            applied = flight.applied(TP(images_topic.get_topic_name(), partition), row_offset(partition))
        ids = counted_ids[partition]

        def known(image_id: str, p: int = partition, applied: int = applied, ids: set[str] = ids) -> bool:
            earlier = counted_at(p, image_id)
            return image_id in ids or (earlier is not None and earlier <= applied)

        step, step_acks = await join_step(
            partition, stamp, in_flight, guesses[partition], label_messages[partition], newest[partition], known
        )
        steps[partition] = step
        acks += step_acks
    return steps, acks


async def _finish(sent: Sent) -> bool:
    """Count a sent batch once its predictions, dead letters and id marks are acked (ids
    durable before the rows); False, after reading it again, when that failed."""
    try:
        await asyncio.wait_for(asyncio.gather(*sent.acks), PUBLISH_TIMEOUT_S)
    except Exception as exc:
        await _failed(sent.tps, len(sent.uncounted.offsets), exc)
        return False
    if app.consumer_generation_id != sent.generation:  # revoked while publishing: the owner counts them
        log.warning(
            "partitions were reassigned during a batch of %d records: not counting it here", len(sent.uncounted.offsets)
        )
        return False
    _count(sent)
    return True


def _counted_by_partition(sent: Sent) -> dict[int, list[int]]:
    """partition -> the indices of its outcomes that count (not repeated ids)."""
    counted: dict[int, list[int]] = defaultdict(list)
    for index, partition in enumerate(sent.partitions):
        if index not in sent.duplicates:
            counted[partition].append(index)
    return counted


def _new_rows(sent: Sent, counted: dict[int, list[int]]) -> dict[int, dict[str, Any]]:
    """Each partition's score row moved past the batch (from the rows as stored now)."""
    window_seconds = settings.pipeline.window_seconds
    rows = {}
    for partition in sorted(set(sent.uncounted.last_offsets) | set(sent.labels.last_offsets)):
        offset, scores = read_row(partition)
        tally = read_tally(partition, scores)
        if partition in sent.uncounted.last_offsets:
            count_batch(scores, tally, sent.result, counted[partition], sent.version, sent.shadow, window_seconds)
            offset = sent.uncounted.last_offsets[partition]
        join = None  # no label fields where no delayed labels are read (exactly_once)
        if labels_topic is not None:
            step = sent.joins.get(partition)
            if step is not None:
                step.tally.count_into(scores, tally, window_seconds)
            join = step.row if step is not None else row_join(partition)
        labels_at = sent.labels.last_offsets.get(partition, labels_offset(partition))
        rows[partition] = new_row(offset, scores, sent.version, tally, labels_at, join)
    return rows


def _count(sent: Sent) -> None:
    """Each partition's score row, moved past the batch (images, labels, join state)."""
    for partition, row in _new_rows(sent, _counted_by_partition(sent)).items():
        store_row(partition, row)
        resend_row(partition)
        if partition in sent.uncounted.last_offsets:
            progress.advanced(partition)
    failing_batches.succeeded()
    metrics.observe_batch(sent.counted, len(sent.duplicates))
    recent_mistakes.add_batch(sent.counted)


async def _commit(sent: Sent) -> bool:
    """exactly_once: one transaction per partition of the batch (its outcomes, marks, row and
    next offset), concurrently; each committed partition's row is then stored here. False,
    after reading the batch again, when any of them was not committed."""
    assert producers is not None
    counted = _counted_by_partition(sent)
    rows = _new_rows(sent, counted)
    images = images_topic.get_topic_name()
    predictions = predictions_topic.get_topic_name()
    done = await asyncio.gather(
        *(
            _commit_partition(partition, row, sent, counted[partition], images, predictions)
            for partition, row in rows.items()
        ),
        return_exceptions=True,
    )
    committed = [partition for partition, outcome in zip(rows, done) if outcome is None]
    for partition in committed:
        store_row(partition, rows[partition])
        progress.advanced(partition)
    part = sent.result.take(sorted(i for p in committed for i in counted[p]))
    repeated = sum(1 for i in sent.duplicates if sent.partitions[i] in committed)
    metrics.observe_batch(part, repeated)
    recent_mistakes.add_batch(part)
    failed = [outcome for outcome in done if outcome is not None]
    if failed:
        await _failed(sent.tps, len(sent.uncounted.offsets), failed[0])
        return False
    failing_batches.succeeded()
    return True


async def _commit_partition(
    partition: int, row: dict[str, Any], sent: Sent, indices: list[int], images: str, predictions: str
) -> None:
    producer = producers.get(partition) if producers is not None else None
    if producer is None:
        raise RuntimeError(f"no transactional producer for images partition {partition} (fenced)")
    dead_letters, answers = _outcome_records(sent.result.take(indices))
    records = [*sent.marks.get(partition, ()), *dead_letters, row_record(partition, row)]
    offsets = {TopicPartition(images, partition): sent.uncounted.last_offsets[partition] + 1}
    try:
        task = asyncio.ensure_future(commit(producer, records, predictions, answers, offsets, settings.kafka.app_id))
        # Until it ends, or a fence replaced the producer: then the coordinator has completed the
        # transaction (committed or aborted) and the recovery that follows the fence reads which,
        # while a closed producer's commit would never return.
        while not (await asyncio.wait({task}, timeout=1.0))[0]:
            if producers is None or producers.get(partition) is not producer:
                task.cancel()
                raise RuntimeError(f"images partition {partition}: fenced during its commit; recovery decides")
        task.result()
    except BaseException:
        if producers is not None and is_fatal(producer):
            log.warning("images partition %d: its transactional producer failed for good; dropped", partition)
            producers.drop(partition, producer)
        raise


async def _duplicate_ids(
    partitions: list[int], offsets: list[int], result: BatchResult, applied: dict[int, int]
) -> tuple[set[int], list[Awaitable[Any]]]:
    """:func:`_repeated_ids`, the marks sent with Faust's producer; returns their acks."""
    acks: list[Awaitable[Any]] = []

    async def expire(partition: int, timestamp: float) -> None:
        acks.extend(await expire_marks(partition, timestamp))

    async def mark(partition: int, marks: list[tuple[str, int]], timestamp: float) -> None:
        acks.extend(await mark_counted(partition, marks, timestamp))

    return await _repeated_ids(partitions, offsets, result, applied, expire, mark), acks


async def _duplicate_ids_records(
    partitions: list[int], offsets: list[int], result: BatchResult, applied: dict[int, int]
) -> tuple[set[int], dict[int, list[Record]]]:
    """:func:`_repeated_ids`, the marks as records for each partition's transaction."""
    records: dict[int, list[Record]] = defaultdict(list)

    async def expire(partition: int, timestamp: float) -> None:
        records[partition].extend(expire_records(partition, timestamp))

    async def mark(partition: int, marks: list[tuple[str, int]], timestamp: float) -> None:
        records[partition].extend(mark_records(partition, marks, timestamp))

    return await _repeated_ids(partitions, offsets, result, applied, expire, mark), records


async def _repeated_ids(
    partitions: list[int],
    offsets: list[int],
    result: BatchResult,
    applied: dict[int, int],
    expire: Callable[[int, float], Awaitable[None]],
    mark: Callable[[int, list[tuple[str, int]], float], Awaitable[None]],
) -> set[int]:
    """Indices of images whose id was already counted in their partition; marks the others.
    ``partitions[i]`` and ``offsets[i]`` are those of the record that carried outcome ``i``
    (the same for the images of a batch record).

    First each partition's marks older than the dedupe horizon (by record timestamps, up to
    the newest in this batch) expire. An earlier mark only counts if its offset is <= the
    partition's applied offset (older than this batch, so its row was written) or it was
    made earlier in this batch.
    """
    newest: dict[int, float] = {}
    for partition, message in zip(partitions, result.messages):
        timestamp = message.timestamp or 0.0
        if timestamp > newest.get(partition, -1.0):
            newest[partition] = timestamp
    for partition, timestamp in newest.items():
        await expire(partition, timestamp)
    ids = [outcome.id if isinstance(outcome, Prediction) else None for outcome in result.outcomes]
    keys = [None if image_id is None else f"{p}/{image_id}" for p, image_id in zip(partitions, ids)]

    def counted(index: int, key: str) -> bool:
        partition, image_id = partitions[index], ids[index]
        earlier = None if image_id is None else counted_at(partition, image_id)
        return earlier is not None and earlier <= applied[partition]

    duplicates = repeats(keys, counted)
    marks: dict[int, dict[str, int]] = defaultdict(dict)  # partition -> id -> offset
    for index, image_id in enumerate(ids):
        if image_id is not None and index not in duplicates:
            marks[partitions[index]][image_id] = offsets[index]
    if duplicates:
        log.info("not counting %d images whose id was already counted", len(duplicates))
    for partition, new in marks.items():
        if new:
            await mark(partition, list(new.items()), newest[partition])
    return duplicates


def _outcome_records(
    result: BatchResult, rejected_labels: Sequence[tuple[RawMessage, InvalidMessage]] = ()
) -> tuple[list[Record], list[tuple[bytes, bytes]]]:
    """A dead letter for each invalid message, or invalid image of a batch record, and for
    each malformed label (header ``stream: labels``), and a ``(key, value)`` prediction for
    each valid image."""
    dead_letters = []
    dlq = dlq_topic.get_topic_name()
    for rejected, stream in ((result.rejections, None), (rejected_labels, "labels")):
        if not rejected:
            continue
        # one line per batch, not per message: a garbage producer must not flood the log
        log.warning("dead-lettering %d message(s) to %s, first: %s", len(rejected), dlq, rejected[0][1])
        for message, error in rejected:
            headers = [(name, value.encode()) for name, value in dead_letter_attributes(error, stream).items()]
            value = error.dead_letter_value(message.value)
            dead_letters.append(Record(dlq, _as_bytes(message.key), value, None, headers))
    predictions = [
        (outcome.id.encode("utf-8"), outcome.encode()) for outcome in result.outcomes if isinstance(outcome, Prediction)
    ]
    return dead_letters, predictions


async def _publish(
    result: BatchResult, rejected_labels: Sequence[tuple[RawMessage, InvalidMessage]] = ()
) -> list[Awaitable[Any]]:
    """Send one prediction per valid image (one record batch per partition, see
    :mod:`.batch_send`) and each dead letter with Faust's producer; the broker's acks, to
    be awaited."""
    producer = app.producer
    dead_letters, predictions = _outcome_records(result, rejected_labels)
    pending: list[Awaitable[Any]] = [
        await producer.send(r.topic, r.key, r.value, None, None, r.headers) for r in dead_letters
    ]
    if predictions:
        pending += await send_batched(producer, predictions_topic.get_topic_name(), predictions)
    return pending


def _as_bytes(key: Iterable[int] | str | bytes | None) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)
