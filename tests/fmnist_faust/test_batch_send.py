"""The batch partitioner picks the partition aiokafka's default partitioner would (the
Kafka-side proof: ``test_pipeline_kafka`` reads every prediction from its key's partition)."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import DefaultPartitioner, murmur2

from fmnist_faust.batch_send import murmur2_many, partitions_of


def test_murmur2_many_equals_aiokafka_murmur2_for_every_length() -> None:
    rng = random.Random(7)
    keys = [rng.randbytes(rng.randint(0, 70)) for _ in range(3000)]
    keys += [f"img-{i:06d}".encode() for i in range(300)] + [b"", b"a", "é".encode(), b"\xff" * 9]
    assert murmur2_many(keys) == [murmur2(key) for key in keys]


@pytest.mark.parametrize("count", [1, 3, 4, 12])
def test_partitions_of_equals_the_default_partitioner(count: int) -> None:
    rng = random.Random(count)
    keys = [rng.randbytes(rng.randint(1, 40)) for _ in range(1000)]
    partitions = list(range(count))
    default = DefaultPartitioner()
    assert partitions_of(keys, partitions) == [default(key, partitions, partitions) for key in keys]


def test_no_keys_no_partitions() -> None:
    assert murmur2_many([]) == []
    assert partitions_of([], [0, 1]) == []
