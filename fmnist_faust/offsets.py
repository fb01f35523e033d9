"""Consumer offsets follow the score rows: commit and resume where the counting is.

Faust commits an input partition up to its highest run of *acked* offsets, and resumes a
re-assigned partition at the group's committed offset. Both can skip images that were
never counted when the broker hangs mid-batch (measured here):

- ``Stream.take_events`` acks a batch's events in a ``finally``, so a batch that failed
  (its sends timed out, the agent crashed) is acked as if it had been processed;
- events dropped during a rebalance (Faust clears the agents' queues, the stream skips
  events of an older generation) are only read again if the consumer seeks back, but
  aiokafka's ``seek_to_committed`` does not seek a partition with no committed offset
  (or offset 0), so the fetcher goes on past them;
- ``Consumer._new_offset`` lets a commit jump a one-offset hole at the head of the acked
  offsets (``min(acked) - committed > 1``), and records a read-offset jump as a "gap"
  that counts as acked; and it consumes the acks it commits even when the commit then
  fails (a rebalance), so a partition with no new images is never committed again.

The score row of a partition (``tables.scores_table``) says exactly which input offsets
are counted: every offset up to ``row.offset``. So this consumer commits ``row.offset + 1``
and, after every assignment, seeks each images partition to ``row.offset + 1``: an image
is never committed past before its batch was counted, and whatever a rebalance dropped is
read again (the rows skip what was already counted). Since nothing here reads Faust's acks,
the images topic has them turned off (``topics.images_topic``: ``acks=False``), which spares
the per-event bookkeeping.

Records the consumer has read but Faust then throws away must be read again too: the app's
flow control clears the stream queues on every resume (:class:`ReadAgainOnClear`).

With ``exactly_once`` (:func:`use_transactions`) the images offsets are committed inside each
batch's transactions (:mod:`.transactions`), never by this consumer, and the consumer reads
with ``isolation_level="read_committed"``, so table recovery applies committed changelog
records only; it also notes, per fetch, how far each changelog partition was read
(:meth:`RowOffsetConsumer.delivered`), which tells recovery when only markers are left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.utils.queues import FlowControlEvent

from .fetches import fold_topics

log = logging.getLogger(__name__)

#: ``tp -> next offset to count`` for partitions whose offsets follow score rows, else None.
NextOffset = Callable[[TP], int | None]


class ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread; its aiokafka consumer reads committed records only when the
    worker runs transactions (:func:`use_transactions`)."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = self.consumer
        if not (RowOffsetConsumer.transactional and not consumer.in_transaction):
            return super()._create_worker_consumer(transport)
        # Faust picks read_committed for its own transactions by this flag; it is read here
        # and in the commit path, so it is set only while the aiokafka consumer is built.
        consumer.in_transaction = True
        try:
            return super()._create_worker_consumer(transport)
        finally:
            consumer.in_transaction = False


class RowOffsetConsumer(faust_aiokafka.Consumer):
    """aiokafka consumer whose commit and resume position come from ``next_offset``."""

    next_offset: NextOffset = staticmethod(lambda tp: None)  # set by ``use_row_offsets``
    folded_topics: frozenset[str] = frozenset()  # set by ``fold_fetches``
    transactional = False  # set by ``use_transactions``

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._delivered: dict[TP, tuple[int, int]] = {}

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Mapping[TP, list[Any]]:
        """A fetch, with the records of each partition of ``folded_topics`` as one record
        (see :mod:`.fetches`)."""
        records = await super()._getmany(active_partitions, timeout)
        self._note_delivered(records)
        return fold_topics(records, self.folded_topics)

    def _note_delivered(self, records: Mapping[TP, list[Any]]) -> None:
        """Per changelog partition: the last record offset fetched, and the position after it
        (a few dict operations per fetch; kept in both modes, so that a worker switched back
        from exactly_once still recovers changelogs that end on markers)."""
        consumer = self._thread._consumer
        if consumer is None:
            return
        subscription = consumer._subscription.subscription
        states = None if subscription is None else subscription.assignment
        if states is None:
            return
        for tp in states.tps:
            if tp.topic in self.folded_topics:
                continue
            state = states.state_value(tp)
            if state is None or not state.has_valid_position:
                continue
            batch = records.get(tp)
            last = batch[-1].offset if batch else self._delivered.get(tp, (-1, 0))[0]
            self._delivered[tp] = (last, state.position)

    def delivered(self, tp: TP) -> tuple[int, int] | None:
        """(offset of the last record of ``tp`` fetched, the consumer's position after that
        fetch) since ``tp`` was last sought; None before a fetch. Read committed, a position
        past the last record means markers (or aborted records) were skipped."""
        return self._delivered.get(tp)

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        """Faust's partitions with new acks, plus every assigned one whose row is past the
        committed offset: a commit that failed (in a rebalance) has already consumed its acks,
        and the partition would stay behind until new images arrive."""
        tps = set(super()._filter_tps_with_pending_acks(topics))
        if self.transactional:  # the transactions commit the rows' offsets
            return iter(tp for tp in tps if self.next_offset(tp) is None)
        for tp in self.assignment():
            wanted = self.next_offset(tp)
            if wanted is not None and (topics is None or tp in topics or tp.topic in topics):
                if self._should_commit(tp, wanted):
                    tps.add(tp)
        return iter(tps)

    def _filter_committable_offsets(self, tps: Iterable[TP]) -> dict[TP, int]:
        commit: dict[TP, int] = {}
        for tp in tps:
            acked_up_to = self._new_offset(tp)  # also trims Faust's acked-offset bookkeeping
            wanted = self.next_offset(tp)
            if wanted is not None and self.transactional:
                continue
            offset = acked_up_to if wanted is None else wanted
            if offset is not None and self._should_commit(tp, offset):
                commit[tp] = offset
        return commit

    async def _seek(self, partition: TP, offset: int) -> None:
        """Seek on the consumer's own thread, as Faust's ``seek_wait`` does. Faust's
        ``_seek`` calls aiokafka's ``seek`` from the event loop's thread while the fetcher
        runs on the consumer thread, and both delete the partition from the fetcher's
        record buffer (``Fetcher.seek_to`` / ``fetched_records``): under repeated rewinds
        (a broker frozen past the session) the fetcher crashed with ``KeyError`` and took
        the worker down."""
        self._delivered.pop(partition, None)
        thread = self._thread
        await thread.call_thread(thread.seek, partition, offset)

    async def perform_seek(self) -> None:
        await super().perform_seek()
        for tp in self.assignment():
            await self.rewind(tp, "assigned")

    async def rewind(self, tp: TP, why: str) -> None:
        """Read ``tp`` again from its first uncounted offset (no-op for other partitions)."""
        offset = self.next_offset(tp)
        if offset is None:
            return
        committed = self._committed_offset.get(tp)
        if why != "assigned" or committed != offset:
            log.info(
                "partition %s: reading again from offset %d (%s; group committed %s)",
                tp.partition,
                offset,
                why,
                committed,
            )
        await self.seek(tp, offset)  # also resets Faust's "already read" filter for ``tp``


class ReadAgainOnClear(FlowControlEvent):
    """The app's flow control of its stream queues; the partitions whose queued events it
    clears are read again from their first uncounted offset (:func:`read_again_on_clear`).

    ``FlowControlEvent.resume`` clears every managed queue even when flow was running, and
    Faust's recovery resumes twice: when it starts reading the changelogs and after seeking
    the stream partitions. A fetch that reached the classify agent's queue in between was
    dropped after the consumer had read past it, so its partition counted nothing until the
    stall check a minute later (about one worker restart in ten, measured under load).
    """

    read_again: ClassVar[Callable[[set[TP]], Awaitable[None]] | None] = None
    _tasks: ClassVar[set[asyncio.Task[None]]] = set()  # held until done: the loop keeps weak references

    def clear(self) -> None:
        lost = {tp for queue in self._queues for tp in queued_partitions(queue)}
        super().clear()
        read_again = ReadAgainOnClear.read_again
        if lost and read_again is not None:
            task = asyncio.ensure_future(read_again(lost))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


def queued_partitions(queue: Any) -> set[TP]:
    """The partitions of the events waiting in a stream queue (other items are skipped)."""
    return {message.tp for item in queue._queue if (message := getattr(item, "message", None)) is not None}


class RowOffsetTransport(faust_aiokafka.Transport):
    Consumer = RowOffsetConsumer


def fold_fetches(topics: Iterable[str]) -> None:
    """Deliver each fetch's records of ``topics`` to their stream as one event per partition."""
    RowOffsetConsumer.folded_topics = frozenset(topics)


def read_again_on_clear(read_again: Callable[[set[TP]], Awaitable[None]]) -> None:
    """Install what reads partitions again when flow control clears their queued events."""
    ReadAgainOnClear.read_again = staticmethod(read_again)


def use_transactions() -> None:
    """Offsets travel in the batches' transactions; read committed records only."""
    RowOffsetConsumer.transactional = True


def use_row_offsets(next_offset: NextOffset) -> None:
    """Install the rule mapping a partition to its next uncounted offset."""
    RowOffsetConsumer.next_offset = staticmethod(next_offset)
