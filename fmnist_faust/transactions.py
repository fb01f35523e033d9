"""``exactly_once``: each batch's output per input partition in one Kafka transaction.

One transactional producer per owned ``images`` partition, with transactional id
``<app id>-<images topic>-<partition>`` (EOS v1 style). Per batch and partition, one
transaction holds the partition's predictions and dead letters, its seen-id marks (seen-ids
changelog partition ``p``), its score row (scores changelog partition ``p``) and the input
offset after the row (``send_offsets_to_transaction``), so a ``read_committed`` reader sees
all of it or none of it, and the worker resumes exactly after what was committed.

Zombies are fenced by the broker, not by the group generation: aiokafka's
``send_offsets_to_transaction(offsets, group_id)`` takes a group id, not the consumer's
group metadata, so the broker cannot refuse a zombie's offsets by generation (KIP-447,
EOS v2, is not available). Instead, on every assignment and before the tables are
recovered (:mod:`.recovery`), the worker starts a fresh producer for each images partition
it was assigned; its ``InitProducerId`` bumps the id's epoch, so any earlier holder of the
id (a frozen worker, this worker's own previous producer) can no longer commit, and the
coordinator completes (commits or aborts) that holder's open transaction before the call
returns. The tables are then read up to the last stable offset: nothing an older owner
does afterwards can reach them or the outputs.

A producer that fails (fenced by a newer owner, or any fatal error) is dropped and its
partition's batches are read again until the next assignment brings a fresh one; a
partition this worker still owns without a producer for longer than the session timeout
stops the worker (:func:`unfenced_too_long`): exact or loud.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.producer.transaction_manager import TransactionState
from faust.types import TP

from .batch_send import send_batched
from .config import Settings

log = logging.getLogger(__name__)


class Record(NamedTuple):
    """One record to send: explicit partition, or None to partition by key."""

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None
    headers: list[tuple[str, bytes]] | None = None


FENCE_RETRY_S = 1.0  # between attempts to start a partition's producer


class FenceFailed(Exception):
    """An assigned partition's transactional producer did not start within the bound."""


def transactional_id(app_id: str, images_topic: str, partition: int) -> str:
    return f"{app_id}-{images_topic}-{partition}"


class PartitionProducers:
    """The transactional producer of each images partition this worker was last assigned."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producers: dict[int, AIOKafkaProducer] = {}
        self._owned_without: dict[int, float] = {}  # partition -> since when it has no producer

    def get(self, partition: int) -> AIOKafkaProducer | None:
        return self._producers.get(partition)

    def _new(self, partition: int) -> AIOKafkaProducer:
        kafka = self._settings.kafka
        return AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=f"{kafka.app_id}-txn-{partition}",
            transactional_id=transactional_id(kafka.app_id, self._settings.topics.images, partition),
            transaction_timeout_ms=self._transaction_timeout_ms,
            max_request_size=4 * 1024 * 1024,
            max_batch_size=256 * 1024,  # as the worker's own producer (faust_app.py)
            **kafka.security.aiokafka_kwargs(),
        )

    @property
    def fence_bound_s(self) -> float:
        """How long a fence may take: the transaction timeout, within which the coordinator
        completes any transaction an earlier holder left open."""
        return self._transaction_timeout_ms / 1000

    @property
    def _transaction_timeout_ms(self) -> int:
        return int(max(60.0, 2 * self._settings.kafka.session_timeout_s) * 1000)

    async def _started(self, partition: int, deadline: float) -> AIOKafkaProducer:
        """A started producer for ``partition``. A start that fails is retried with a new
        producer until ``deadline``: a broker that just resumed can answer metadata without
        brokers, and aiokafka's coordinator lookup then fails an assertion."""
        while True:
            producer = self._new(partition)
            try:
                await asyncio.wait_for(producer.start(), max(0.0, deadline - time.monotonic()))
                return producer
            except BaseException as exc:
                await producer.stop()
                if not isinstance(exc, Exception):
                    raise
                if time.monotonic() + FENCE_RETRY_S > deadline:
                    raise FenceFailed(f"images partition {partition}: no transactional producer ({exc!r})") from exc
                log.warning(
                    "images partition %d: its transactional producer did not start (%r); retrying", partition, exc
                )
            await asyncio.sleep(FENCE_RETRY_S)

    async def fence(self, assigned: Iterable[TP]) -> None:
        """A fresh producer (a new epoch of its transactional id) for every assigned images
        partition; the previous ones are closed. Raises :class:`FenceFailed` when one did not
        start within :attr:`fence_bound_s`."""
        topic = self._settings.topics.images
        partitions = sorted({tp.partition for tp in assigned if tp.topic == topic})
        started = time.monotonic()
        deadline = started + self.fence_bound_s
        outcomes = await asyncio.gather(*(self._started(p, deadline) for p in partitions), return_exceptions=True)
        fresh = {p: o for p, o in zip(partitions, outcomes) if isinstance(o, AIOKafkaProducer)}
        failed = [o for o in outcomes if not isinstance(o, AIOKafkaProducer)]
        if failed:
            await asyncio.gather(*(producer.stop() for producer in fresh.values()), return_exceptions=True)
            raise failed[0]
        old, self._producers = self._producers, fresh
        self._owned_without.clear()
        if partitions:
            log.info(
                "transactional producers fenced for images partitions %s in %.2f s",
                partitions,
                time.monotonic() - started,
            )
        await asyncio.gather(*(producer.stop() for producer in old.values()), return_exceptions=True)

    def drop(self, partition: int, producer: AIOKafkaProducer) -> None:
        """Forget a failed producer (if still the partition's); closed in the background."""
        if self._producers.get(partition) is producer:
            del self._producers[partition]
            self._owned_without.setdefault(partition, time.monotonic())
        _retrieve_failure(producer)
        asyncio.ensure_future(producer.stop())

    def unfenced_too_long(self, owned: set[int], bound_s: float) -> list[int]:
        """Owned partitions without a producer for longer than ``bound_s``."""
        now = time.monotonic()
        for partition in list(self._owned_without):
            if partition not in owned:
                del self._owned_without[partition]
        for partition in owned - self._producers.keys():
            self._owned_without.setdefault(partition, now)
        return sorted(p for p, since in self._owned_without.items() if now - since > bound_s)

    async def stop(self) -> None:
        producers, self._producers = self._producers, {}
        await asyncio.gather(*(producer.stop() for producer in producers.values()), return_exceptions=True)


def is_fatal(producer: AIOKafkaProducer) -> bool:
    """The producer can start no other transaction (fenced, or its sender died)."""
    manager = producer._txn_manager
    return manager is None or manager.is_fatal_error()


def _retrieve_failure(producer: AIOKafkaProducer) -> None:
    """Mark the failed producer's transaction outcome as seen (its caller handled the failure);
    otherwise asyncio logs "Future exception was never retrieved", with a traceback, at exit."""
    manager = producer._txn_manager
    waiter = None if manager is None else manager.wait_for_transaction_end()
    if waiter is not None and waiter.done() and not waiter.cancelled():
        waiter.exception()


def _abortable(producer: AIOKafkaProducer) -> bool:
    manager = producer._txn_manager
    return manager is not None and manager.state in (TransactionState.IN_TRANSACTION, TransactionState.ABORTABLE_ERROR)


async def commit(
    producer: AIOKafkaProducer,
    records: Sequence[Record],
    predictions_topic: str,
    predictions: Sequence[tuple[bytes, bytes]],
    offsets: dict[TopicPartition, int],
    group_id: str,
) -> None:
    """One transaction: ``records``, the ``(key, value)`` predictions (one record batch per
    partition, :func:`.batch_send.send_batched`) and the consumer ``offsets`` of ``group_id``.
    Raises if it was not committed, after aborting it when the producer still can."""
    await producer.begin_transaction()
    try:
        for record in records:  # the acks need no wait: the commit waits for every send
            await producer.send(
                record.topic, record.value, key=record.key, partition=record.partition, headers=record.headers
            )
        if predictions:
            await send_batched(producer, predictions_topic, predictions)
        await producer.send_offsets_to_transaction(offsets, group_id)
        await producer.commit_transaction()
    except BaseException:
        if _abortable(producer):
            try:
                await producer.abort_transaction()
            except Exception as exc:
                log.warning("aborting a transaction failed (%r)", exc)
        raise
