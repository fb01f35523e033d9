"""Global totals on any worker: the newest score row of every changelog partition.

Each worker's table only holds the partitions it is active (or standby) for, so after
a scale-out one worker alone would report part of the stream. Every score row, though,
is written to the changelog partition of the same number and is the only key there, so
the last record of changelog partition ``p`` is partition ``p``'s newest row. Reading
those N records answers the exact global totals from any worker; a local row is used
instead where it is newer (a partition this worker is processing right now).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from mode import Service

from .core.scores import Scores
from .faust_app import app, settings
from .tables import local_rows, scores_table, sum_rows

log = logging.getLogger(__name__)


class ChangelogRows:
    """Reads the last record of each partition of the scores changelog (lazily connected)."""

    def __init__(self) -> None:
        self._consumer: Any = None
        self._lock = asyncio.Lock()

    async def _start(self) -> Any:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        topic = scores_table.changelog_topic.get_topic_name()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            **settings.kafka.security.aiokafka_kwargs(),
        )
        await consumer.start()
        consumer.assign([TopicPartition(topic, p) for p in range(settings.kafka.partitions)])
        return consumer

    async def read(self, timeout: float = 5.0) -> dict[int, dict[str, Any]]:
        """partition -> newest row found in the changelog."""
        async with self._lock:
            if self._consumer is None:
                self._consumer = await self._start()
            consumer = self._consumer
            partitions = list(consumer.assignment())
            ends = await consumer.end_offsets(partitions)
            waiting = {tp for tp, end in ends.items() if end > 0}
            for tp in waiting:
                consumer.seek(tp, ends[tp] - 1)
            rows: dict[int, dict[str, Any]] = {}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while waiting and loop.time() < deadline:
                batches = await consumer.getmany(*waiting, timeout_ms=200)
                for tp, records in batches.items():
                    for record in records:
                        if record.offset == ends[tp] - 1 and record.value is not None:
                            rows[tp.partition] = json.loads(record.value)
                            waiting.discard(tp)
            if waiting:
                raise TimeoutError(f"no newest row from changelog partitions {sorted(t.partition for t in waiting)}")
            return rows

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


changelog_rows = ChangelogRows()


@app.service
class ChangelogReaderService(Service):
    """Closes the reader's Kafka connection when the worker stops."""

    async def on_stop(self) -> None:
        await changelog_rows.stop()


async def global_totals() -> tuple[Scores, str | None]:
    """Sum over every partition of the newest row, local or from the changelog."""
    try:
        rows = await changelog_rows.read()
    except Exception as exc:  # the broker may be briefly unreachable: say so, serve local rows
        log.warning("reading the scores changelog failed (%r); serving this worker's rows only", exc)
        rows = {}
    for partition, row in local_rows().items():
        if partition not in rows or row["offset"] > rows[partition]["offset"]:
            rows[partition] = row
    return sum_rows(rows)
