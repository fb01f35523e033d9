"""The Kafka worker's label-join state: per partition, the entries of :mod:`.core.labels`
(no Faust here; the table and its changelog are in :mod:`.tables`).

What is durable is a chain of *chunks* in the ``label-join`` changelog, partition ``p`` for
images/labels partition ``p``: each batch that created or changed entries of a partition
writes one chunk (``{"clock", "prev", "ids", "entries", "versions"}``, key
``"<partition>@<token>"``, unique per batch and process), with ``prev`` the key of the chunk
before it, and waits for the broker's ack before it writes the partition's score row, which
names the newest chunk (``head``) and the clock. The state of a row is its chain, applied
oldest first, each chunk's entries upserted and then every entry past its life removed at
the chunk's clock, and finally at the row's clock (:meth:`PartitionJoin.rebuild`). A chunk
that a failed batch or a zombie wrote is on no row's chain and is ignored; a replay writes
its own. Entries are only ever removed at the end of their life, a function of the clock,
so a chunk carries upserts only.

A chunk older than the wait before the clock of the partition's last written row holds
nothing any row still needs (every entry it touched is past its life by then, in every
row that could still win recovery, since rows are ranked by clock first: see
``tables.row_rank``): it gets a tombstone (:meth:`JoinChunks.older_than`), so memory and
the changelog hold about one wait of entries. The bound per id: one :class:`Entry` from
its first sighting until the clock passes ``first_seen + wait``, in memory and in the
changelog.
"""

from __future__ import annotations

import heapq
import itertools
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from .core.labels import Entry

ENTRIES_PER_CHUNK = 2000  # 2,000 entries of ids <= 128 characters stay well under a 1 MiB message
_TOKEN = uuid.uuid4().hex[:10]  # this process's part of every chunk key and row stamp
_serial = itertools.count()


def new_token() -> str:
    """Unique per call and per process: a chunk key's or a row stamp's suffix."""
    return f"{_TOKEN}.{next(_serial)}"


class Chunk(NamedTuple):
    clock: float
    prev: str | None
    ids: list[str]
    entries: list[Entry]


def chunk_value(partition: int, clock: float, prev: str | None, items: list[tuple[str, Entry]]) -> dict[str, Any]:
    """The changelog value of one chunk (model versions written once, entries by index)."""
    versions = sorted({entry.version for _, entry in items if entry.version is not None})
    index = {version: n for n, version in enumerate(versions)}
    return {
        "partition": partition,
        "clock": clock,
        "prev": prev,
        "versions": versions,
        "ids": [image_id for image_id, _ in items],
        "entries": [
            [e.first_seen, e.predicted, None if e.version is None else index[e.version], e.label] for _, e in items
        ],
    }


def chunk_of(value: Mapping[str, Any]) -> Chunk:
    versions = list(value.get("versions", ()))
    entries = [
        Entry(float(first), predicted, None if version is None else versions[version], label)
        for first, predicted, version, label in value["entries"]
    ]
    return Chunk(float(value["clock"]), value.get("prev"), list(value["ids"]), entries)


class JoinChunks:
    """The label-join changelog of every partition this worker holds (active or standby), in
    the order it was written."""

    def __init__(self) -> None:
        self._chunks: dict[int, dict[str, Chunk]] = defaultdict(dict)

    def __len__(self) -> int:
        return sum(len(chunks) for chunks in self._chunks.values())

    def entries(self) -> int:
        return sum(len(chunk.ids) for chunks in self._chunks.values() for chunk in chunks.values())

    @staticmethod
    def partition_of(key: str) -> int:
        return int(key.split("@", 1)[0])

    def remember(self, key: str, value: Mapping[str, Any] | Chunk) -> None:
        chunk = value if isinstance(value, Chunk) else chunk_of(value)
        self._chunks[self.partition_of(key)][key] = chunk

    def forget(self, key: str) -> None:
        self._chunks[self.partition_of(key)].pop(key, None)

    def chain(self, partition: int, head: str | None) -> list[Chunk]:
        """The chunks of ``head``'s chain still held, oldest first (it ends where a chunk was tombstoned)."""
        chunks = self._chunks[partition]
        chain: list[Chunk] = []
        key = head
        while key is not None and key in chunks:
            chain.append(chunks[key])
            key = chunks[key].prev
        chain.reverse()
        return chain

    def older_than(self, partition: int, cutoff: float) -> list[str]:
        """Forget the chunks of ``partition`` whose clock is before ``cutoff``, scanning in the order
        they were written and stopping at the first newer one (so a batch pays only for what
        goes); returns their keys, for the caller's tombstones."""
        chunks = self._chunks[partition]
        old = list(itertools.takewhile(lambda key: chunks[key].clock < cutoff, chunks))
        for key in old:
            del chunks[key]
        return old


class PartitionJoin:
    """One partition's entries as of one score row (its ``stamp``), and how a batch moves them on."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.stamp: str | None = None  # the row these entries belong to (None: no row wrote any)
        self.head: str | None = None  # the newest chunk of that row's chain
        self.clock = float("-inf")
        self.entries: dict[str, Entry] = {}
        self._deadlines: list[tuple[float, str]] = []  # heap; an entry replaced or removed leaves a stale item

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, image_id: str) -> Entry | None:
        return self.entries.get(image_id)

    def rebuild(self, chain: Iterable[Chunk], head: str | None, clock: float, stamp: str | None) -> None:
        """The entries of the row stamped ``stamp`` (its chain, its clock), from nothing."""
        self.entries.clear()
        self._deadlines.clear()
        for chunk in chain:
            self.apply(dict(zip(chunk.ids, chunk.entries)))
            self.expire(chunk.clock)
        self.expire(clock)
        self.head, self.clock, self.stamp = head, clock, stamp

    def apply(self, changes: Mapping[str, Entry]) -> None:
        """Store a batch's new and changed entries (:func:`~.core.labels.join_batch`)."""
        entries = self.entries
        for image_id, entry in changes.items():
            before = entries.get(image_id)
            if before is None or before.first_seen != entry.first_seen:  # a new life: a new deadline
                heapq.heappush(self._deadlines, (entry.deadline(self.wait_s), image_id))
            entries[image_id] = entry

    def expire(self, clock: float) -> list[Entry]:
        """Remove, and return, the entries whose life ended before ``clock``."""
        removed: list[Entry] = []
        deadlines, entries = self._deadlines, self.entries
        while deadlines and deadlines[0][0] < clock:
            deadline, image_id = heapq.heappop(deadlines)
            entry = entries.get(image_id)
            if entry is not None and entry.deadline(self.wait_s) == deadline:
                del entries[image_id]
                removed.append(entry)
        return removed

    def next_deadline(self) -> float | None:
        """When the next entry's life ends (None: nothing waits)."""
        deadlines, entries = self._deadlines, self.entries
        while deadlines:
            deadline, image_id = deadlines[0]
            entry = entries.get(image_id)
            if entry is not None and entry.deadline(self.wait_s) == deadline:
                return deadline
            heapq.heappop(deadlines)
        return None
