"""Running accuracy in a changelog-backed Faust table, exact under replay.

One row per ``images`` partition: ``{"offset": last applied input offset,
"model_version": str, "scores": Scores.to_dict()}``. A row is written to its own
changelog partition (the same number as the input partition), in one message, so the
counts and the offset they include can never disagree. After a crash the worker
re-reads input from the last committed offset and skips every event whose offset the
row already covers: each image is counted exactly once, whatever Faust replays.
"""

from __future__ import annotations

from typing import Any

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


def total_scores() -> tuple[Scores, str | None]:
    """Sum of every row this worker holds (active and standby partitions)."""
    total = Scores()
    version = None
    for row in list(scores_table.data.values()):
        total.merge(Scores.from_dict(row["scores"]))
        version = row.get("model_version") or version
    return total, version
