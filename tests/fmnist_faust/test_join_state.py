"""The Kafka worker's label-join state (``join_state``): chunks, chains, rebuild, tombstones.

What makes the worker exact across a crash is that the state a row names can be rebuilt
from its chain of chunks alone, whatever the batches in between did, and that tombstoning
chunks older than the wait changes nothing a row needs. Both are checked here against the
live state over random runs of batches, with failed batches (orphan chunks) among them.
"""

from __future__ import annotations

import random

import pytest

from fmnist_faust.core.labels import Entry, Guess, Label, expired, join_batch
from fmnist_faust.join_state import Chunk, JoinChunks, PartitionJoin, chunk_of, chunk_value

WAIT = 30.0


def test_a_chunk_round_trips_through_its_changelog_value() -> None:
    items = [("a", Entry(1.5, 3, "mlp-1", None)), ("b", Entry(2.0, None, None, 7)), ("c", Entry(2.5, 1, "mlp-2", 1))]
    value = chunk_value(0, 9.0, "0@x.1", items)
    assert value["versions"] == ["mlp-1", "mlp-2"]
    assert chunk_of(value) == Chunk(9.0, "0@x.1", ["a", "b", "c"], [e for _, e in items])


def test_entries_leave_at_the_end_of_their_life_only() -> None:
    state = PartitionJoin(WAIT)
    state.apply({"a": Entry(10.0, 1, "v"), "b": Entry(20.0, None, None, 4)})
    assert state.next_deadline() == 40.0 and state.expire(40.0) == []  # not past it yet
    state.apply({"a": Entry(10.0, 1, "v", 1)})  # joined: same life, same deadline
    assert state.expire(40.1) == [Entry(10.0, 1, "v", 1)] and state.next_deadline() == 50.0
    state.apply({"a": Entry(45.0, None, None, 2)})  # a new life of the same id
    assert [e.first_seen for e in state.expire(1e9)] == [20.0, 45.0] and state.next_deadline() is None


def test_a_chain_ends_where_a_chunk_is_gone_and_ignores_chunks_off_it() -> None:
    chunks = JoinChunks()
    chunks.remember("0@a", Chunk(1.0, None, ["x"], [Entry(1.0, 1, "v")]))
    chunks.remember("0@b", Chunk(2.0, "0@a", ["y"], [Entry(2.0, 2, "v")]))
    chunks.remember("0@orphan", Chunk(3.0, "0@b", ["z"], [Entry(3.0, 3, "v")]))  # a failed batch's
    chunks.remember("0@c", Chunk(3.0, "0@b", ["w"], [Entry(3.0, 4, "v")]))
    assert [c.ids for c in chunks.chain(0, "0@c")] == [["x"], ["y"], ["w"]]
    assert chunks.older_than(0, 2.5) == ["0@a", "0@b"]  # in the order written, up to the first newer one
    assert [c.ids for c in chunks.chain(0, "0@c")] == [["w"]]
    assert chunks.chain(1, "0@c") == [] and chunks.chain(0, None) == []


class Worker:
    """The join of one partition as ``label_join.join_step`` drives it, without Faust: a
    batch's chunk is remembered before its row, and a failed batch leaves its chunk behind."""

    def __init__(self, chunks: JoinChunks) -> None:
        self.chunks = chunks
        self.state = PartitionJoin(WAIT)
        self.row: tuple[str | None, float] = (None, float("-inf"))  # committed (head, clock)
        self.counts = {"label_expired": 0, "labels_expired": 0, "joined": 0}
        self.serial = 0

    def batch(self, guesses: list[Guess], labels: list[Label], newest: float, fail: bool) -> None:
        before = (dict(self.state.entries), self.state.head, self.state.clock, list(self.state._deadlines))
        clock = max(self.state.clock, newest)
        changes, tally = join_batch(self.state.get, guesses, labels, lambda image_id: False)
        self.state.apply(changes)
        tally.merge(expired(self.state.expire(clock)))
        kept = [(i, e) for i, e in changes.items() if self.state.entries.get(i) is e]
        head = self.state.head
        if kept:
            self.serial += 1
            key = f"0@{self.serial}"
            self.chunks.remember(key, Chunk(clock, head, [i for i, _ in kept], [e for _, e in kept]))
            head = key
        self.chunks.older_than(0, self.row[1] - WAIT)  # tombstones: before the row, by the last row's clock
        if fail:  # the row is never written: the next batch starts from the committed one
            entries, self.state.head, self.state.clock, deadlines = before
            self.state.entries.clear()
            self.state.entries.update(entries)
            self.state._deadlines[:] = deadlines
            return
        self.state.head, self.state.clock = head, clock
        self.row = (head, clock)
        self.counts["joined"] += len(tally.joined)
        self.counts["label_expired"] += sum(tally.label_expired.values())
        self.counts["labels_expired"] += tally.labels_expired


@pytest.mark.parametrize("seed", range(40))
def test_the_state_of_a_row_rebuilds_from_its_chain_alone(seed: int) -> None:
    rng = random.Random(seed)
    chunks = JoinChunks()
    worker = Worker(chunks)
    now = 1000.0
    ids = [f"id-{n}" for n in range(60)]
    for _ in range(rng.randint(20, 80)):
        now += rng.choice([0.0, 0.5, 2.0, 7.0, WAIT / 2, WAIT + 1])
        guesses = [
            Guess(i, rng.randrange(10), "v", now - rng.uniform(0, 5)) for i in rng.sample(ids, rng.randint(0, 4))
        ]
        labels = [Label(i, rng.randrange(10), now - rng.uniform(0, 5)) for i in rng.sample(ids, rng.randint(0, 4))]
        stamps = [g.at for g in guesses] + [label.at for label in labels] + [now]
        worker.batch(guesses, labels, max(stamps), fail=rng.random() < 0.15)

        head, clock = worker.row
        rebuilt = PartitionJoin(WAIT)
        rebuilt.rebuild(chunks.chain(0, head), head, clock, "stamp")
        assert rebuilt.entries == worker.state.entries
        assert rebuilt.next_deadline() == worker.state.next_deadline()
    # memory holds about one wait of chunks: none older than a wait before the last row's clock
    assert all(chunk.clock >= worker.row[1] - 2 * WAIT - 10 for chunk in chunks._chunks[0].values())
