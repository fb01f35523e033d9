"""Global totals on any worker: the highest-offset score row of every changelog partition.

Each worker's table only holds the partitions it is active (or standby) for, so after
a scale-out one worker alone would report part of the stream. Every score row, though,
is written to the changelog partition of the same number and is the only key there, so
the tail of changelog partition ``p`` holds partition ``p``'s newest rows. The highest-ranked
row (``tables.row_rank``: clock, then offsets) among the last :data:`TAIL` records wins (a
zombie worker, frozen past its session, may append an older row after the owner's), and a
local row wins where it ranks higher. The owner of a partition repairs such a tail by writing its row again
(:func:`repair_tails`), so compaction, which keeps the last record, keeps the right one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from mode import Service

from .core.rollout import ModelTally
from .core.scores import Scores
from .faust_app import app, settings
from .tables import local_rows, resend_row, row_rank, scores_table, sum_rows, sum_tallies

log = logging.getLogger(__name__)


class ChangelogRows:
    """Reads the last record of each partition of the scores changelog (lazily connected)."""

    def __init__(self) -> None:
        self._consumer: Any = None
        self._lock = asyncio.Lock()
        self._stopped = False

    async def _start(self) -> Any:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        topic = scores_table.changelog_topic.get_topic_name()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            # exactly_once: committed rows only, up to the last stable offset
            isolation_level="read_committed" if settings.kafka.exactly_once else "read_uncommitted",
            **settings.kafka.security.aiokafka_kwargs(),
        )
        await consumer.start()
        consumer.assign([TopicPartition(topic, p) for p in range(settings.kafka.partitions)])
        return consumer

    async def read(self, timeout: float = 5.0) -> dict[int, list[dict[str, Any]]]:
        """partition -> its last (up to :data:`TAIL`) rows in the changelog, oldest first."""
        async with self._lock:
            if self._stopped:
                raise RuntimeError("the worker is stopping")
            if self._consumer is None:
                self._consumer = await self._start()
            consumer = self._consumer
            partitions = list(consumer.assignment())
            ends = await consumer.end_offsets(partitions)
            waiting = {tp for tp, end in ends.items() if end > 0}
            for tp in waiting:
                consumer.seek(tp, max(0, ends[tp] - TAIL))
            rows: dict[int, list[dict[str, Any]]] = {}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while waiting and loop.time() < deadline:
                batches = await consumer.getmany(*waiting, timeout_ms=200)
                for tp, records in batches.items():
                    for record in records:
                        if record.value is not None:
                            rows.setdefault(tp.partition, []).append(json.loads(record.value))
                for tp in list(waiting):  # the last offset may be a transaction marker: the position tells
                    if await consumer.position(tp) >= ends[tp]:
                        waiting.discard(tp)
            if waiting:
                raise TimeoutError(f"no newest row from changelog partitions {sorted(t.partition for t in waiting)}")
            return rows

    async def stop(self) -> None:
        """After the read in flight, if any: a consumer stopped under a read left that read (and
        the web server's shutdown, waiting for the request) hanging for the 40 s request timeout."""
        async with self._lock:
            self._stopped = True
            if self._consumer is not None:
                await self._consumer.stop()
                self._consumer = None


changelog_rows = ChangelogRows()
TAIL = 32  # offsets read per changelog partition: far more than a zombie's in-flight batches (a row
# in a transaction takes two: the row and its commit marker)


@app.service
class ChangelogReaderService(Service):
    """Closes the reader's Kafka connection when the worker stops."""

    async def on_stop(self) -> None:
        await changelog_rows.stop()


async def global_totals() -> tuple[Scores, str | None]:
    """Sum over every partition of its highest-offset row, local or from the changelog."""
    return sum_rows(await global_rows())


async def global_totals_by_model() -> tuple[Scores, str | None, ModelTally]:
    """:func:`global_totals` and the per-model tally of the very same rows (they sum exactly)."""
    rows = await global_rows()
    scores, version = sum_rows(rows)
    return scores, version, sum_tallies(rows)


async def global_rows() -> dict[int, dict[str, Any]]:
    """partition -> its highest-ranked row, local or from the changelog."""
    try:
        tails = await changelog_rows.read()
    except Exception as exc:  # the broker may be briefly unreachable: say so, serve local rows
        log.warning("reading the scores changelog failed (%r); serving this worker's rows only", exc)
        tails = {}
    rows = {partition: max(tail, key=row_rank) for partition, tail in tails.items() if tail}
    for partition, row in local_rows().items():
        if partition not in rows or row_rank(row) > row_rank(rows[partition]):
            rows[partition] = row
    return rows


_idle_rows: dict[int, tuple[float, int, int]] = {}  # partition -> rank of this worker's row at the previous tick


@app.timer(5.0)
async def repair_tails() -> None:
    """Rewrite this worker's row of each partition it owns where the changelog ends on an
    older row (written by a zombie after this worker's last one). Only rows unchanged since
    the previous tick are compared: a row just sent may not be readable yet. Not with
    exactly_once: a zombie is fenced and cannot append a row."""
    from .agents import owned_partitions

    if settings.kafka.exactly_once:
        return
    local = local_rows()
    owned = {p for p in owned_partitions() if p in local and _idle_rows.get(p) == row_rank(local[p])}
    _idle_rows.clear()
    _idle_rows.update({p: row_rank(row) for p, row in local.items()})
    if not owned:
        return
    try:
        tails = await changelog_rows.read()
    except Exception:  # reported by global_totals; the next tick retries
        return
    for partition in owned:
        row, tail = local[partition], tails.get(partition)
        if tail and row_rank(tail[-1]) < row_rank(row):
            log.warning(
                "partition %d: the scores changelog ends on an older row (%s < %s); rewriting ours",
                partition,
                row_rank(tail[-1]),
                row_rank(row),
            )
            resend_row(partition)
