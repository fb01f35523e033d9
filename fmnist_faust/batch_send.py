"""Send a batch's records as one Kafka record batch per partition, not one send per record.

``Producer.send`` (Faust's, then aiokafka's) costs per record a coroutine, a metadata
check, a future and its completion; for the worker's one prediction per image that was
the largest cost of ours after decode + predict (``bench/profile_worker.py``). aiokafka's
batch API (``create_batch`` / ``send_batch``) fills a record batch per partition and
returns one future per batch, acked like any send: awaiting the returned futures still
means every record is on the broker. Records are partitioned by key exactly as the
producer's default partitioner does (murmur2 of the key, like the Java client), so a
prediction lands where ``Producer.send`` would have put it; the hash is computed for the
whole batch at once (:func:`murmur2_many`), since aiokafka's pure-Python ``murmur2`` cost
~2.5 us per key, about 2% of the worker's CPU per image.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

import numpy as np

_SEED = 0x9747B28C
_M = np.uint32(0x5BD1E995)


def murmur2_many(keys: Sequence[bytes]) -> list[int]:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``, aiokafka's
    ``partitioner.murmur2``) of every key, computed with numpy over the keys of each length."""
    hashes = [0] * len(keys)
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        by_length[len(key)].append(index)
    with np.errstate(over="ignore"):  # uint32 arithmetic wraps, as the Java ints do
        for length, indices in by_length.items():
            data = np.frombuffer(b"".join([keys[i] for i in indices]), dtype=np.uint8).reshape(len(indices), length)
            for index, value in zip(indices, _murmur2_rows(data, length).tolist()):
                hashes[index] = value
    return hashes


def _murmur2_rows(data: np.ndarray, length: int) -> np.ndarray:
    """murmur2 of each row of ``data`` (n keys of ``length`` bytes) as uint32."""
    rows = len(data)
    h = np.full(rows, (_SEED ^ length) & 0xFFFFFFFF, dtype=np.uint32)
    whole = length // 4
    if whole:
        words = np.ascontiguousarray(data[:, : whole * 4]).view("<u4").astype(np.uint32)
        for column in range(whole):
            k = words[:, column] * _M
            k ^= k >> np.uint32(24)
            k *= _M
            h *= _M
            h ^= k
    tail = data[:, whole * 4 :].astype(np.uint32)
    extra = length % 4
    if extra >= 3:
        h ^= tail[:, 2] << np.uint32(16)
    if extra >= 2:
        h ^= tail[:, 1] << np.uint32(8)
    if extra >= 1:
        h ^= tail[:, 0]
        h *= _M
    h ^= h >> np.uint32(13)
    h *= _M
    h ^= h >> np.uint32(15)
    return h


def partitions_of(keys: Sequence[bytes], partitions: Sequence[int]) -> list[int]:
    """The partition aiokafka's ``DefaultPartitioner`` picks for each key (``partitions``
    sorted by id, as the producer passes them)."""
    count = len(partitions)
    return [partitions[(value & 0x7FFFFFFF) % count] for value in murmur2_many(keys)]


async def send_batched(producer: Any, topic: str, records: Iterable[tuple[bytes, bytes]]) -> list[Awaitable[Any]]:
    """Queue ``(key, value)`` records on ``topic`` with Faust's ``app.producer`` (its aiokafka
    producer) or an aiokafka producer (a transactional one); returns the acks (one per record batch)
    to await. Keys must not be None (they choose the partition)."""
    if hasattr(producer, "_ensure_producer"):  # Faust's (faust-streaming's aiokafka driver): the AIOKafkaProducer
        producer = producer._ensure_producer()
    partitions = sorted(await producer.partitions_for(topic))
    items = list(records)
    by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    for partition, record in zip(partitions_of([key for key, _ in items], partitions), items):
        by_partition[partition].append(record)
    acks: list[Awaitable[Any]] = []
    for partition, batch in by_partition.items():
        builder = producer.create_batch()
        for key, value in batch:
            if builder.append(timestamp=None, key=key, value=value) is None:  # full: send it, start another
                acks.append(await producer.send_batch(builder, topic, partition=partition))
                builder = producer.create_batch()
                builder.append(timestamp=None, key=key, value=value)  # an empty batch takes any record
        acks.append(await producer.send_batch(builder, topic, partition=partition))
    return acks
