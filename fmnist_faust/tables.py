"""Running accuracy in a changelog-backed Faust table, exact under replay.

One row per ``images`` partition: ``{"offset": last applied input offset,
"model_version": str, "scores": Scores.to_dict()}``. A row is written to its own
changelog partition (the same number as the input partition), in one message, so the
counts and the offset they include can never disagree. After a crash the worker
re-reads input from the last committed offset and skips every event whose offset the
row already covers: each image is counted exactly once, whatever Faust replays.

Duplicate ids (a distinct message re-sent with an id already counted) are counted once
too, through ``seen_table``: key ``"<partition>/<id>"``, value ``[partition, offset]`` of
the message that counted the id, written to changelog partition ``partition``. An entry
only proves "already counted" if its offset is <= the partition's row offset; a newer one
was left by a batch that crashed before its row was written, is ignored, and is rewritten
identically when that batch is replayed. Since the image key is the id (the contract),
the same id always hashes to the same partition, so per partition means globally; a
message without a key is deduplicated only within the partition it landed in.
Memory: one small entry per distinct counted id (the in-memory store, like the rows).
"""

from __future__ import annotations

import json
from typing import Any, Awaitable

from .app import app, settings
from .core.scores import Scores

scores_table = app.Table(
    "scores",
    default=None,
    key_type=str,
    partitions=settings.partitions,
    help="Per-partition running accuracy, stamped with the last applied offset.",
)


def read_row(partition: int) -> tuple[int, Scores]:
    """(last applied offset or -1, scores) of one input partition."""
    row: dict[str, Any] | None = scores_table.data.get(str(partition))
    if row is None:
        return -1, Scores()
    return int(row["offset"]), Scores.from_dict(row["scores"])


def write_row(partition: int, offset: int, scores: Scores, model_version: str) -> None:
    """Store locally and send the row to changelog partition ``partition``."""
    row = {"offset": offset, "model_version": model_version, "scores": scores.to_dict()}
    key = str(partition)
    scores_table.data[key] = row
    scores_table.send_changelog(partition, key, row)


seen_table = app.Table(
    "seen-ids",
    default=None,
    key_type=str,
    partitions=settings.partitions,
    help="'<partition>/<image id>' -> [partition, offset] of the message that counted the id.",
)


def counted_at(partition: int, image_id: str) -> int | None:
    """Offset of the message of ``partition`` that counted ``image_id``, if one was written."""
    entry: list[int] | None = seen_table.data.get(f"{partition}/{image_id}")
    return None if entry is None else int(entry[1])


async def mark_counted(partition: int, image_id: str, offset: int) -> Awaitable[Any]:
    """Record that ``offset`` counted ``image_id``; returns the broker's ack (to await).

    Sent with the producer directly, in the bytes ``send_changelog`` would produce (JSON
    key and value): per image, Faust's buffered ``send_changelog`` costs about twice as much.
    """
    key, value = f"{partition}/{image_id}", [partition, offset]
    seen_table.data[key] = value
    return await app.producer.send(
        seen_table.changelog_topic.get_topic_name(),
        json.dumps(key).encode("utf-8"), json.dumps(value).encode("utf-8"), partition, None, None)


def local_rows() -> dict[int, dict[str, Any]]:
    """partition -> row, for every row this worker holds (active and standby partitions)."""
    return {int(key): row for key, row in list(scores_table.data.items())}


def sum_rows(rows: dict[int, dict[str, Any]]) -> tuple[Scores, str | None]:
    """Total scores over ``rows`` and the model version that wrote the newest of them."""
    total, version = Scores(), None
    for partition in sorted(rows):
        total.merge(Scores.from_dict(rows[partition]["scores"]))
        version = rows[partition].get("model_version") or version
    return total, version
