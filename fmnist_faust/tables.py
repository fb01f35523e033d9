"""Running accuracy in a changelog-backed Faust table, exact under replay.

One row per ``images`` partition: ``{"offset": last applied input offset,
"model_version": str, "scores": Scores.to_dict(), "models": ModelTally.to_dict()}`` (the
tally: each live version's part of the scores, and shadow scores with their agreement;
see :mod:`.core.rollout`), and for the labels stream, co-partitioned with the images:
``"labels_offset"`` (last applied offset of labels partition ``p``), ``"clock"`` (the
partition's newest record time), ``"head"`` (the newest chunk of its label-join state)
and ``"stamp"`` (unique per row written; see :mod:`.join_state`). A row is written to its
own changelog partition (the same number as the input partition), in one message, so the
counts, the per-model parts, the offsets they include and the join state they go with can
never disagree. After a crash the worker re-reads input from the last committed offsets
and skips every event whose offset the row already covers: each image and each label is
counted exactly once, whatever Faust replays.

Duplicate ids (a distinct message re-sent with an id already counted) are counted once
too, through ``seen_table``: for each partition, the ids it counted and the offset of the
message that counted each, written to changelog partition ``partition`` (and acked)
before the row that counts them. A mark only proves "already counted" if its offset is
<= the partition's row offset; a newer one was left by a batch that crashed before its
row was written, is ignored, and is rewritten identically when that batch is replayed.
Since the image key is the id (the contract), the same id always hashes to the same
partition, so per partition means globally; a message without a key is deduplicated
only within the partition it landed in. Ids expire after the dedupe horizon
(``FMNIST_DEDUPE_SECONDS``, by record timestamps; see :mod:`.seen_ids`): memory and the
changelog hold one horizon of ids, not the history.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Iterable
from typing import Any, NamedTuple

import faust
from faust.types import TP, EventT

from .core.labels import Entry
from .core.rollout import ModelTally
from .core.scores import Scores
from .faust_app import app, settings
from .join_state import ENTRIES_PER_CHUNK, Chunk, JoinChunks, chunk_value, new_token
from .offsets import use_row_offsets
from .seen_ids import SeenIds
from .transactions import Record


def row_rank(row: dict[str, Any]) -> tuple[float, int, int]:
    """How rows of one partition are ordered: by clock, then images offset, then labels offset.

    Each row a worker writes ranks above the one before (its clock never goes back, and it
    covers more of one input at least). Between workers, every row is exact for what it
    covers and goes with its own join chain, so any of them is a consistent state; clock
    first makes the one that wins recovery never need a chunk the owner already tombstoned
    (:mod:`.join_state`). Rows written before the labels stream have no clock: by offset.
    """
    return (float(row.get("clock", float("-inf"))), int(row["offset"]), int(row.get("labels_offset", -1)))


class ScoresTable(faust.Table):
    """Recovery keeps the highest-ranked row (:func:`row_rank`), not the last one written.

    A worker frozen past its session timeout (a zombie) can still write a row for a
    partition another worker now owns; that row is exact for its own offsets but older than
    the owner's. Every row holds the counts up to its offsets, so the highest rank wins.
    """

    def apply_changelog_batch(self, batch: Iterable[EventT]) -> None:
        for event in batch:
            key, row = event.key, event.value
            if row is None:
                self.data.pop(key, None)
            elif key not in self.data or row_rank(row) >= row_rank(self.data[key]):
                self.data[key] = row


scores_table = app.tables.add(
    ScoresTable(
        app,
        name="scores",
        default=None,
        key_type=str,
        partitions=settings.kafka.partitions,
        beacon=app.tables.beacon,
        # One row per batch, one key per partition: with segments rolled every minute the
        # cleaner keeps the changelog (and so a restart's recovery) at about a minute of rows.
        extra_topic_configs={"segment.ms": "60000", "min.cleanable.dirty.ratio": "0.1"},
        help="Per-partition running accuracy, stamped with the last applied offset.",
    )
)


def row_offset(partition: int) -> int:
    """Last applied offset of one input partition, or -1 (cheap: the scores stay encoded)."""
    row: dict[str, Any] | None = scores_table.data.get(str(partition))
    return -1 if row is None else int(row["offset"])


def read_row(partition: int) -> tuple[int, Scores]:
    """(last applied offset or -1, scores) of one input partition."""
    row: dict[str, Any] | None = scores_table.data.get(str(partition))
    if row is None:
        return -1, Scores()
    return int(row["offset"]), Scores.from_dict(row["scores"])


def labels_offset(partition: int) -> int:
    """Last applied offset of one labels partition, or -1."""
    row: dict[str, Any] | None = scores_table.data.get(str(partition))
    return -1 if row is None else int(row.get("labels_offset", -1))


class RowJoin(NamedTuple):
    """What a partition's row says of its label-join state."""

    head: str | None
    clock: float
    stamp: str | None


def row_join(partition: int) -> RowJoin:
    row: dict[str, Any] | None = scores_table.data.get(str(partition))
    if row is None:
        return RowJoin(None, float("-inf"), None)
    return RowJoin(row.get("head"), float(row.get("clock", float("-inf"))), row.get("stamp"))


def next_offset(tp: TP) -> int | None:
    """First input offset of ``tp`` not yet counted: where the consumer commits and resumes."""
    if tp.topic == settings.topics.images:
        return row_offset(tp.partition) + 1
    if tp.topic == settings.topics.labels:
        return labels_offset(tp.partition) + 1
    return None


use_row_offsets(next_offset)


def read_tally(partition: int, scores: Scores) -> ModelTally:
    """The per-model tally of one partition's row (``scores``: that row's scores, as read)."""
    row: dict[str, Any] | None = scores_table.data.get(str(partition))
    if row is None:
        return ModelTally()
    return ModelTally.of_record(row.get("models"), scores, row.get("model_version"))


def new_row(
    offset: int,
    scores: Scores,
    model_version: str,
    tally: ModelTally | None = None,
    labels_offset: int = -1,
    join: RowJoin | None = None,
) -> dict[str, Any]:
    """A score row; ``join`` (with ``labels_offset``) only where delayed labels are read."""
    row: dict[str, Any] = {"offset": offset, "model_version": model_version, "scores": scores.to_dict()}
    if tally is not None:
        row["models"] = tally.to_dict()
    if join is not None:
        row.update(labels_offset=labels_offset, clock=join.clock, head=join.head, stamp=join.stamp)
    return row


def write_row(
    partition: int,
    offset: int,
    scores: Scores,
    model_version: str,
    tally: ModelTally | None = None,
    labels_offset: int = -1,
    join: RowJoin | None = None,
) -> None:
    """Store locally and send the row to changelog partition ``partition``."""
    scores_table.data[str(partition)] = new_row(offset, scores, model_version, tally, labels_offset, join)
    resend_row(partition)


def store_row(partition: int, row: dict[str, Any]) -> None:
    """Store a row locally only: it was committed in a transaction (:func:`row_record`)."""
    scores_table.data[str(partition)] = row


def row_record(partition: int, row: dict[str, Any]) -> Record:
    """The row as a record for changelog partition ``partition``, in the bytes
    ``send_changelog`` would produce (JSON key and value), for a transaction."""
    topic = scores_table.changelog_topic.get_topic_name()
    return Record(topic, json.dumps(str(partition)).encode("utf-8"), json.dumps(row).encode("utf-8"), partition)


def resend_row(partition: int) -> None:
    """Send this worker's row of ``partition`` to its changelog partition (again)."""
    key = str(partition)
    scores_table.send_changelog(partition, key, scores_table.data[key])


class SeenIdsTable(faust.Table):
    """Which ids each partition counted, and at which offset, within the dedupe horizon.

    In memory: :class:`~.seen_ids.SeenIds` (one dict entry per id, so a lookup is a dict
    access). On the changelog: one message per batch and partition (key
    ``"<partition>@<first offset>"``, value ``{"partition", "ids", "offsets", "timestamp"}``)
    rather than one per id, which Faust and aiokafka would make cost ~20% of the worker's
    CPU per image; a tombstone for the key once the chunk expires, so compaction keeps one
    horizon of ids and a restart replays no more than that.
    """

    def apply_changelog_batch(self, batch: Iterable[EventT]) -> None:
        for event in batch:
            if event.value is None:
                seen_ids.forget(event.key)
            else:
                seen_ids.remember(event.key, event.value)


seen_ids = SeenIds(settings.pipeline.dedupe_seconds)


def horizon_topic_configs(horizon_s: float) -> dict[str, str]:
    """Changelog settings for a table whose keys live ``horizon_s``: compaction only cleans
    closed segments, so segments roll within a horizon (at least a minute, at most an hour)
    and tombstones go after as long; the changelog then holds about a horizon."""
    segment_ms = str(int(min(max(horizon_s, 60.0), 3600.0) * 1000))
    return {"segment.ms": segment_ms, "delete.retention.ms": segment_ms, "min.cleanable.dirty.ratio": "0.1"}


seen_table = app.tables.add(
    SeenIdsTable(
        app,
        name="seen-ids",
        default=None,
        key_type=str,
        partitions=settings.kafka.partitions,
        beacon=app.tables.beacon,
        extra_topic_configs=horizon_topic_configs(settings.pipeline.dedupe_seconds),
        help="'<partition>@<first offset>' -> ids counted by one batch, until the dedupe horizon.",
    )
)
MARKS_PER_MESSAGE = 2000  # 2,000 ids of <= 128 characters stay well under a 1 MiB message


def counted_at(partition: int, image_id: str) -> int | None:
    """Offset of the message of ``partition`` that counted ``image_id``, if one was written."""
    return seen_ids.counted_at(partition, image_id)


def expire_records(partition: int, timestamp: float) -> list[Record]:
    """Forget the chunks of ``partition`` older than the horizon before ``timestamp``; their
    tombstones, to send."""
    topic = seen_table.changelog_topic.get_topic_name()
    return [
        Record(topic, json.dumps(key).encode("utf-8"), None, partition) for key in seen_ids.expire(partition, timestamp)
    ]


def mark_records(partition: int, marks: list[tuple[str, int]], timestamp: float) -> list[Record]:
    """Remember that each ``(id, offset)`` of ``partition`` counted that id (``timestamp``: the
    newest record timestamp among them); the changelog records to send, in the bytes
    ``send_changelog`` would produce (JSON key and value)."""
    topic = seen_table.changelog_topic.get_topic_name()
    records = []
    for start in range(0, len(marks), MARKS_PER_MESSAGE):
        chunk = marks[start : start + MARKS_PER_MESSAGE]
        entry = {
            "partition": partition,
            "ids": [i for i, _ in chunk],
            "offsets": [o for _, o in chunk],
            "timestamp": timestamp,
        }
        key = f"{partition}@{chunk[0][1]}"
        seen_ids.remember(key, entry)
        records.append(Record(topic, json.dumps(key).encode("utf-8"), json.dumps(entry).encode("utf-8"), partition))
    return records


async def _send_records(records: list[Record]) -> list[Awaitable[Any]]:
    return [await app.producer.send(r.topic, r.key, r.value, r.partition, None, None) for r in records]


async def expire_marks(partition: int, timestamp: float) -> list[Awaitable[Any]]:
    """:func:`expire_records`, sent with Faust's producer; returns the acks."""
    return await _send_records(expire_records(partition, timestamp))


async def mark_counted(partition: int, marks: list[tuple[str, int]], timestamp: float) -> list[Awaitable[Any]]:
    """:func:`mark_records`, sent with Faust's producer directly, so the caller can wait for the
    broker's acks before writing the row; returns the acks."""
    return await _send_records(mark_records(partition, marks, timestamp))


class LabelJoinTable(faust.Table):
    """The label-join chunks of each partition (:mod:`.join_state`): key ``"<partition>@<token>"``,
    a tombstone once a chunk is older than the wait; in memory, :data:`join_chunks`."""

    def apply_changelog_batch(self, batch: Iterable[EventT]) -> None:
        for event in batch:
            if event.value is None:
                join_chunks.forget(event.key)
            else:
                join_chunks.remember(event.key, event.value)


join_chunks = JoinChunks()
# registered only where the worker reads delayed labels (not with exactly_once: see config)
join_table: LabelJoinTable | None = None
if settings.kafka.reads_labels:
    join_table = app.tables.add(
        LabelJoinTable(
            app,
            name="label-join",
            default=None,
            key_type=str,
            partitions=settings.kafka.partitions,
            beacon=app.tables.beacon,
            extra_topic_configs=horizon_topic_configs(settings.pipeline.label_wait_s),
            help="'<partition>@<token>' -> the label-join entries one batch created or changed, until the wait is over.",
        )
    )


def _join_changelog() -> str:
    assert join_table is not None, "the label join runs only where delayed labels are read"
    name: str = join_table.changelog_topic.get_topic_name()
    return name


async def send_chunks(
    partition: int, clock: float, prev: str | None, items: list[tuple[str, Entry]]
) -> tuple[str | None, list[Awaitable[Any]]]:
    """Write a batch's changed entries of ``partition`` as chunks (more than one past
    :data:`~.join_state.ENTRIES_PER_CHUNK`, each the next link of the chain after ``prev``);
    returns the new head and the acks to await before the row. The bytes are those
    ``send_changelog`` would write (JSON key and value)."""
    topic = _join_changelog()
    acks: list[Awaitable[Any]] = []
    head = prev
    for start in range(0, len(items), ENTRIES_PER_CHUNK):
        part = items[start : start + ENTRIES_PER_CHUNK]
        key = f"{partition}@{new_token()}"
        value = chunk_value(partition, clock, head, part)
        join_chunks.remember(key, Chunk(clock, head, [i for i, _ in part], [e for _, e in part]))
        acks.append(
            await app.producer.send(
                topic, json.dumps(key).encode("utf-8"), json.dumps(value).encode("utf-8"), partition, None, None
            )
        )
        head = key
    return head, acks


async def tombstone_chunks(partition: int, cutoff: float) -> list[Awaitable[Any]]:
    """Forget the chunks of ``partition`` older than ``cutoff`` and send their tombstones."""
    topic = _join_changelog()
    return [
        await app.producer.send(topic, json.dumps(key).encode("utf-8"), None, partition, None, None)
        for key in join_chunks.older_than(partition, cutoff)
    ]


def local_rows() -> dict[int, dict[str, Any]]:
    """partition -> row, for every row this worker holds (active and standby partitions)."""
    return {int(key): row for key, row in list(scores_table.data.items())}


def sum_tallies(rows: dict[int, dict[str, Any]]) -> ModelTally:
    """The per-model tallies of ``rows`` added up: the live parts sum to :func:`sum_rows`' totals."""
    total = ModelTally()
    for row in rows.values():
        total.merge(ModelTally.of_record(row.get("models"), Scores.from_dict(row["scores"]), row.get("model_version")))
    return total


def sum_rows(rows: dict[int, dict[str, Any]]) -> tuple[Scores, str | None]:
    """Total scores over ``rows`` and the model version that wrote the newest of them."""
    total, version = Scores(), None
    for partition in sorted(rows):
        total.merge(Scores.from_dict(rows[partition]["scores"]))
        version = rows[partition].get("model_version") or version
    return total, version
