"""The images topic reaches the classify agent a fetch at a time, not a Faust event per record.

Faust's per-event path (a callback under ``wait_first`` with its tasks, the conductor's
lock, an ``Event``, a queue hop and a ``sleep(0)`` per record) costs ~0.1-0.3 ms per record
on this kind of machine, whatever the agent does: the worker sat at Faust's own ceiling.
So the consumer (``offsets.RowOffsetConsumer._getmany``) folds the records each fetch
brought for one images partition into one record, :func:`fold`, whose value is a
:class:`FetchedRecords`. Everything after it is Faust's, once per fetch instead of once per
record: round-robin over partitions, flow control, generation stamping, highwater
tracking, the conductor's routing, the stream's buffer and its backpressure (a full buffer
pauses the partition). :class:`FetchSchema` passes the folded value through the topic's
decoding untouched, and :func:`fetch_of` turns an event into a :class:`Fetch`.

An event that was not folded (an agent test context's ``put``) is a fetch of one record,
so the agent has one input type whatever delivered it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import faust
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from .core.pipeline import RawMessage


class FetchedRecords(NamedTuple):
    """The records of one images partition from one fetch, in offset order."""

    offsets: list[int]
    messages: list[RawMessage]


class Fetch(NamedTuple):
    """Records of one partition, with the consumer generation they were fetched in."""

    tp: TP
    generation: int
    offsets: list[int]
    messages: list[RawMessage]

    @property
    def partition(self) -> int:
        return self.tp.partition

    def cut(self, start: int, stop: int | None = None) -> Fetch:
        return Fetch(self.tp, self.generation, self.offsets[start:stop], self.messages[start:stop])


def fold(records: list[Any]) -> list[Any]:
    """One record carrying ``records`` (one partition's, from one fetch) as a :class:`FetchedRecords`.

    It has the last record's position and timestamp, so Faust's bookkeeping (its read-offset
    filter, highwater, lag) sees the partition as read up to there.
    """
    last = records[-1]
    bundle = FetchedRecords(
        [record.offset for record in records],
        [
            RawMessage(record.value, record.key, None if record.timestamp is None else record.timestamp / 1000.0)
            for record in records
        ],
    )
    size = sum(record.serialized_value_size for record in records)
    return [
        ConsumerRecord(
            last.topic,
            last.partition,
            last.offset,
            last.timestamp,
            last.timestamp_type,
            None,
            bundle,
            None,
            0,
            size,
            (),
        )
    ]


def fold_topics(records: Mapping[TP, list[Any]], topics: Iterable[str]) -> Mapping[TP, list[Any]]:
    """``records`` (a fetch: partition -> records) with each partition of ``topics`` folded."""
    wanted = set(topics)
    if not wanted:
        return records
    return {tp: fold(items) if tp.topic in wanted and items else items for tp, items in records.items()}


class FetchSchema(faust.Schema):
    """Raw bytes, except a folded fetch, whose value is already decoded records."""

    def loads_value(self, app: Any, message: Any, *, loads: Any = None, serializer: Any = None) -> Any:
        if isinstance(message.value, FetchedRecords):
            return message.value
        return super().loads_value(app, message, loads=loads, serializer=serializer)


def fetch_of(event: Any) -> Fetch:
    """The records an event of the images topic carries."""
    message = event.message
    value = event.value
    if isinstance(value, FetchedRecords):
        return Fetch(message.tp, message.generation_id, value.offsets, value.messages)
    return Fetch(
        message.tp, message.generation_id, [message.offset], [RawMessage(value, message.key, message.timestamp)]
    )
