"""Send a batch's records as one Kafka record batch per partition, not one send per record.

``Producer.send`` (Faust's, then aiokafka's) costs per record a coroutine, a metadata
check, a future and its completion; for the worker's one prediction per image that was
the largest cost of ours after decode + predict (``bench/profile_worker.py``). aiokafka's
batch API (``create_batch`` / ``send_batch``) fills a record batch per partition and
returns one future per batch, acked like any send: awaiting the returned futures still
means every record is on the broker. Records are partitioned by key exactly as the
producer's default partitioner does (murmur2 of the key, like the Java client), so a
prediction lands where ``Producer.send`` would have put it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Iterable
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

partition_of = DefaultPartitioner()


async def send_batched(faust_producer: Any, topic: str, records: Iterable[tuple[bytes, bytes]]) -> list[Awaitable[Any]]:
    """Queue ``(key, value)`` records on ``topic`` with the aiokafka producer under Faust's
    ``app.producer``; returns the acks (one per record batch) to await. Keys must not be None
    (they choose the partition)."""
    producer = faust_producer._ensure_producer()  # faust-streaming's aiokafka driver: the AIOKafkaProducer
    partitions = sorted(await producer.partitions_for(topic))
    by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    for key, value in records:
        by_partition[partition_of(key, partitions, partitions)].append((key, value))
    acks: list[Awaitable[Any]] = []
    for partition, items in by_partition.items():
        builder = producer.create_batch()
        for key, value in items:
            if builder.append(timestamp=None, key=key, value=value) is None:  # full: send it, start another
                acks.append(await producer.send_batch(builder, topic, partition=partition))
                builder = producer.create_batch()
                builder.append(timestamp=None, key=key, value=value)  # an empty batch takes any record
        acks.append(await producer.send_batch(builder, topic, partition=partition))
    return acks
