"""The ids a Kafka partition counted within the dedupe horizon, and when (no Faust here).

Marks arrive in chunks (one per batch and partition, one changelog message each, keyed
``"<partition>@<first offset>"``) stamped with the newest record timestamp in the chunk.
A partition's *watermark* is the newest record timestamp it has seen; a chunk older than
``watermark - horizon`` expires: its ids leave memory and the caller writes a tombstone for
its key, so compaction removes it from the changelog too. Memory and the changelog thus
hold one horizon of ids, whatever the history; a partition that receives nothing keeps
what it has (it cannot grow either). Record timestamps, not the wall clock, decide, so a
replayed batch expires exactly what the first attempt did.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Chunk:
    timestamp: float
    ids: list[str]
    offsets: list[int]


class SeenIds:
    """``(partition, id) -> offset`` of the message that counted the id, within the horizon."""

    def __init__(self, horizon_s: float) -> None:
        self.horizon_s = horizon_s
        # partition -> id -> offset; the id strings and offset ints are the chunks' own objects,
        # so an id costs one dict slot beyond what its chunk holds (~150 B in all, measured)
        self._offsets: dict[int, dict[str, int]] = defaultdict(dict)
        self._chunks: dict[int, dict[str, Chunk]] = defaultdict(dict)  # oldest first
        self._watermarks: dict[int, float] = {}

    def __len__(self) -> int:
        return sum(len(offsets) for offsets in self._offsets.values())

    def chunks(self) -> int:
        return sum(len(chunks) for chunks in self._chunks.values())

    def counted_at(self, partition: int, image_id: str) -> int | None:
        return self._offsets[partition].get(image_id)

    def remember(self, key: str, entry: dict[str, Any]) -> None:
        """Add (or replace: a replayed batch writes the same key again) one chunk of marks."""
        partition = int(entry["partition"])
        self.forget(key, partition)
        chunk = Chunk(float(entry.get("timestamp", 0.0)), list(entry["ids"]), [int(o) for o in entry["offsets"]])
        self._chunks[partition][key] = chunk
        self._offsets[partition].update(zip(chunk.ids, chunk.offsets))
        self._watermarks[partition] = max(self._watermarks.get(partition, chunk.timestamp), chunk.timestamp)

    def forget(self, key: str, partition: int | None = None) -> None:
        """Drop one chunk (a tombstone on the changelog); an id re-marked by a newer chunk stays."""
        if partition is None:
            partition = int(key.split("@", 1)[0])
        chunk = self._chunks[partition].pop(key, None)
        if chunk is None:
            return
        offsets = self._offsets[partition]
        for image_id, offset in zip(chunk.ids, chunk.offsets):
            if offsets.get(image_id) == offset:
                del offsets[image_id]

    def expire(self, partition: int, timestamp: float) -> list[str]:
        """Advance the partition's watermark to ``timestamp``; returns the keys of the chunks that
        expired, already forgotten here. Chunks are scanned in the order they were written and
        the scan stops at the first live one, so a batch pays only for what expires."""
        watermark = max(self._watermarks.get(partition, timestamp), timestamp)
        self._watermarks[partition] = watermark
        expired = []
        for key, chunk in self._chunks[partition].items():  # insertion order: oldest batch first
            if chunk.timestamp >= watermark - self.horizon_s:
                break
            expired.append(key)
        for key in expired:
            self.forget(key, partition)
        return expired
