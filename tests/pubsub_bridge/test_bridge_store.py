"""The state stores: counts and counted keys change together, once, across replicas.

The contract tests run on both implementations of :class:`pubsub_bridge.store.Store`
(``kind`` = sqlite, postgres: a real server, see ``bench.local_postgres``); the last ones are about
SQLite's file format and query plans.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from fmnist_faust.core.contract import InvalidMessage, Prediction
from fmnist_faust.core.labels import Label
from fmnist_faust.core.pipeline import BatchResult, RawMessage
from fmnist_faust.core.registry import ModelPointer, RolloutState
from fmnist_faust.core.rollout import ShadowBatch
from pubsub_bridge.store import MIGRATIONS, StateStore, Store, image_key, label_key, message_key, open_store

OpenStore = Callable[..., Store]


@pytest.fixture(params=["sqlite", "postgres"])
def open_one(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Factory: ``open_one(horizon_s=..., clock=...)`` opens a store on this test's one
    location (a file, or a fresh database); several calls are replicas (or a reopen)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.sqlite3'}"
    else:
        url = request.getfixturevalue("pg_url")
    opened: list[Store] = []

    def open_(**kwargs: object) -> Store:
        opened.append(open_store(url, **kwargs))  # type: ignore[arg-type]
        return opened[-1]

    yield open_
    for store in opened:
        store.close()


def batch(labels_and_guesses: list[tuple[int | None, int]], rejected: int = 0) -> BatchResult:
    outcomes: list = [
        Prediction(id=f"i{n}", predicted=guess, confidence=0.9, label=label, model_version="m", latency_ms=None)
        for n, (label, guess) in enumerate(labels_and_guesses)
    ]
    outcomes += [InvalidMessage("not_json", "bad") for _ in range(rejected)]
    return BatchResult([RawMessage(b"x", timestamp=100.0) for _ in outcomes], outcomes, [None] * len(outcomes))


def test_commit_persists_across_reopen(open_one: OpenStore) -> None:
    store = open_one()
    store.commit(
        batch([(1, 1), (2, 3), (None, 4)], rejected=1),
        [image_key("a"), image_key("b"), image_key("c"), message_key("m1")],
        "v1",
        10,
    )
    assert store.seen([image_key("a"), image_key("z"), message_key("m1")]) == {image_key("a"), message_key("m1")}
    store.close()

    reopened = open_one()
    report = reopened.scores.report(reopened.model_version)
    assert (report["images"], report["labeled"], report["correct"], report["rejected"]) == (3, 2, 1, 1)
    assert report["model_version"] == "v1"
    assert reopened.counted() == 4
    assert reopened.scores.window_series(10) == [
        {"start": 100, "end": 110, "images": 3, "labeled": 2, "correct": 1, "accuracy": 0.5}
    ]
    reopened.close()


def test_a_key_counted_before_is_skipped_and_the_rest_counted(open_one: OpenStore) -> None:
    store = open_one()
    store.commit(batch([(1, 1)]), [image_key("a")], "v1", 10)
    store.commit(batch([(2, 2), (3, 3)]), [image_key("b"), image_key("a")], "v1", 10)
    assert store.scores.images == 2 and store.counted() == 2
    assert store.seen([image_key("a"), image_key("b")]) == {image_key("a"), image_key("b")}
    store.close()


def test_a_failed_commit_changes_nothing(open_one: OpenStore) -> None:
    store = open_one()
    store.commit(batch([(1, 1)]), [image_key("a")], "v1", 10)
    with pytest.raises((sqlite3.IntegrityError, TypeError)):  # a NULL key: no key may be NULL
        store.commit(batch([(2, 2), (3, 3)]), [image_key("b"), None], "v1", 10)  # type: ignore[list-item]
    assert store.scores.images == 1 and store.counted() == 1 and store.seen([image_key("b")]) == set()
    store.close()


def test_commit_needs_one_distinct_key_per_outcome(open_one: OpenStore) -> None:
    store = open_one()
    with pytest.raises(ValueError):
        store.commit(batch([(1, 1), (2, 2)]), [image_key("a"), image_key("a")], "v1", 10)
    with pytest.raises(ValueError):
        store.commit(batch([(1, 1)]), [], "v1", 10)
    store.close()


def test_seen_handles_more_keys_than_one_query_binds(open_one: OpenStore) -> None:
    store = open_one()
    keys = [image_key(f"k{i}") for i in range(1200)]
    store.commit(batch([(0, 0)] * 1200), keys, "v1", 10)
    assert store.seen(keys + [image_key("new")]) == set(keys)
    store.close()


def test_replicas_sharing_a_store_count_each_key_once(open_one: OpenStore) -> None:
    """Two bridges on one file (replicas on images-sub): totals are global and exact."""
    first, second = open_one(), open_one()
    first.commit(batch([(1, 1), (2, 2)]), [image_key("a"), image_key("b")], "v1", 10)
    # the second replica was handed "b" again (a redelivery) together with a new "c"
    second.commit(batch([(2, 2), (3, 0)]), [image_key("b"), image_key("c")], "v1", 10)
    for store in (first, second):
        report = store.scores.report(store.model_version)
        assert (report["images"], report["correct"]) == (3, 2)
        assert store.counted() == 3
    first.close()
    second.close()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_an_id_resent_inside_the_horizon_counts_once_and_after_it_again(open_one: OpenStore) -> None:
    clock = Clock()
    store = open_one(horizon_s=60, clock=clock)
    store.commit(batch([(1, 1)]), [image_key("a")], "v1", 10)
    clock.now += 59.9
    assert store.seen([image_key("a")]) == {image_key("a")}
    store.commit(batch([(1, 1)]), [image_key("a")], "v1", 10)
    assert store.scores.images == 1
    clock.now += 0.2  # 60.1 s after it was counted: expired, even before any pruning
    assert store.seen([image_key("a")]) == set()
    store.commit(batch([(1, 1)]), [image_key("a")], "v1", 10)
    assert store.scores.images == 2
    clock.now += 59.9  # counting it again restarted its horizon
    assert store.seen([image_key("a")]) == {image_key("a")}
    store.close()


def test_a_restart_keeps_unexpired_ids(open_one: OpenStore) -> None:
    clock = Clock()
    first = open_one(horizon_s=60, clock=clock)
    first.commit(batch([(1, 1), (2, 2)]), [image_key("old"), image_key("young")], "v1", 10)
    first.close()
    clock.now += 30
    second = open_one(horizon_s=60, clock=clock)
    second.commit(batch([(1, 1)]), [image_key("young")], "v1", 10)
    assert second.scores.images == 2
    second.close()


def test_prune_deletes_only_expired_keys_in_bounded_batches(open_one: OpenStore) -> None:
    clock = Clock()
    store, replica = open_one(horizon_s=100, clock=clock), open_one(horizon_s=100, clock=clock)
    old = [image_key(f"old{i}") for i in range(250)]
    store.commit(batch([(0, 0)] * 250), old, "v1", 10)
    clock.now += 50
    young = [image_key(f"young{i}") for i in range(40)]
    store.commit(batch([(0, 0)] * 40), young, "v1", 10)
    assert store.prune(limit=100) == 0  # nothing is older than the horizon yet
    clock.now += 60  # old: 110 s, young: 60 s
    # Two replicas pruning one file take turns; neither deletes a key still inside the horizon.
    deleted = [store.prune(limit=100), replica.prune(limit=100), store.prune(limit=100), replica.prune(limit=100)]
    assert deleted == [100, 100, 50, 0]
    assert store.counted() == 40 and store.seen(young) == set(young)
    assert store.scores.images == 290  # pruning never changes the totals
    assert store.longest_prune_s > 0
    store.close()
    replica.close()


def test_without_a_horizon_nothing_expires(open_one: OpenStore) -> None:
    clock = Clock()
    store = open_one(clock=clock)
    store.commit(batch([(1, 1)]), [image_key("a")], "v1", 10)
    clock.now += 10 * 365 * 86400
    assert store.prune() == 0 and store.seen([image_key("a")]) == {image_key("a")}
    store.close()


def unlabelled(ids: list[str], guess: int, at: float) -> BatchResult:
    outcomes: list = [Prediction(i, guess, 0.9, None, "m", None) for i in ids]
    return BatchResult([RawMessage(b"x", timestamp=at) for _ in ids], outcomes, [None] * len(ids))


def test_delayed_labels_join_wait_repeat_and_expire_once(open_one: OpenStore) -> None:
    """The join rule in the store's transactions: an image waits, its label joins it (first
    wins), a label for an unknown id waits, one for an image counted with its own label is
    late, a redelivered label message and a redelivered malformed one count once, and what
    waits past the wait is counted expired once, across a reopen and two replicas."""
    clock = Clock()
    t0 = clock.now
    store, replica = open_one(clock=clock, label_wait_s=30.0), open_one(clock=clock, label_wait_s=30.0)
    store.commit(unlabelled(["a", "b", "c"], 4, t0), [image_key(i) for i in "abc"], "v1", 10)
    store.commit(batch([(2, 2)]), [image_key("i0")], "v1", 10)  # an image with its own label
    assert store.waiting() == 3
    labels = [Label("a", 4, t0 + 3), Label("b", 1, t0 + 3), Label("a", 9, t0 + 4), Label("i0", 2, t0 + 4)]
    labels += [Label("nobody", 5, t0 + 4)]
    keys = [label_key(f"m{n}") for n in range(len(labels))]
    store.commit_labels(labels, keys, [(label_key("bad"), "not_json")], 10)
    replica.commit_labels(labels[:2], keys[:2], [(label_key("bad"), "not_json")], 10)  # redelivered elsewhere
    report = replica.scores.report(None)
    assert (report["images"], report["labeled"], report["correct"], report["awaiting_label"]) == (4, 3, 2, 1)
    assert report["labels"] == {
        "received": 5,
        "joined": 2,
        "awaiting_image": 1,
        "expired": 0,
        "repeated": 1,
        "late": 1,
        "rejected": 1,
        "rejected_by_kind": {"not_json": 1},
    }
    assert replica.waiting() == 4  # a and b (joined, until their wait ends), c, nobody
    store.close()
    store = open_one(clock=clock, label_wait_s=30.0)
    assert store.expire_labels() == 0  # nobody's wait is over yet
    clock.now += 30.5  # a, b, c: their wait is over; nobody's (seen at t0 + 4) not yet
    assert [store.expire_labels(limit=2), replica.expire_labels(limit=2), store.expire_labels()] == [2, 1, 0]
    report = store.scores.report(None)
    assert (report["labeled"], report["awaiting_label"], report["label_expired"]) == (3, 0, 1)
    assert report["labels"]["awaiting_image"] == 1
    clock.now += 10
    assert store.expire_labels() == 1 and store.waiting() == 0
    report = store.scores.report(None)
    assert report["labels"]["awaiting_image"] == 0 and report["labels"]["expired"] == 1
    assert report["images"] == report["labeled"] + report["awaiting_label"] + report["label_expired"]
    _, tally = store.totals()
    assert tally.live["v1"].scores.label_expired == 1 and tally.live["v1"].scores.labeled == 3
    replica.close()


def test_a_label_that_comes_first_waits_for_its_image(open_one: OpenStore) -> None:
    clock = Clock()
    store = open_one(clock=clock, label_wait_s=30.0)
    store.commit_labels([Label("a", 3, clock.now)], [label_key("m1")], [], 10)
    store.commit(unlabelled(["a"], 3, clock.now + 20), [image_key("a")], "v1", 10)
    report = store.scores.report(None)
    assert (report["labeled"], report["correct"], report["awaiting_label"]) == (1, 1, 0)
    assert report["labels"]["joined"] == 1 and report["labels"]["awaiting_image"] == 0
    assert store.scores.windows[int(clock.now + 20) // 10 * 10][1:] == [1, 1]  # when the pair was complete
    store.close()


def test_commit_labels_needs_one_distinct_key_per_message(open_one: OpenStore) -> None:
    store = open_one()
    with pytest.raises(ValueError):
        store.commit_labels([Label("a", 1, 0.0)], [label_key("m"), label_key("n")], [], 10)
    with pytest.raises(ValueError):
        store.commit_labels([Label("a", 1, 0.0)], [label_key("m")], [(label_key("m"), "not_json")], 10)
    store.close()


def test_a_store_from_before_the_horizon_is_migrated_once(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    with sqlite3.connect(path) as old:  # the schema as it was: no index on processed_at, version 0
        old.executescript("CREATE TABLE processed (key TEXT PRIMARY KEY, processed_at REAL NOT NULL) WITHOUT ROWID;")
        old.execute("INSERT INTO processed VALUES ('id:a', 1.0)")
    old.close()
    store = StateStore(path, horizon_s=60, clock=Clock(1000.0))
    assert store.schema_version() == len(MIGRATIONS)
    assert store.prune() == 1 and store.counted() == 0
    store.close()
    assert StateStore(path).schema_version() == len(MIGRATIONS)  # reopening runs no migration again


def test_opening_and_pruning_never_scan_the_processed_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restarted bridge must not read history: every statement it runs at start, and the
    prune, finds its rows through a key or an index (SQLite's plan says SEARCH, not SCAN)."""
    path = tmp_path / "state.sqlite3"
    clock = Clock()
    seed = StateStore(path, horizon_s=60, clock=clock)
    seed.commit(batch([(0, 0)] * 1000), [image_key(f"k{i}") for i in range(1000)], "v1", 10)
    seed.close()

    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args: object, **kwargs: object) -> sqlite3.Connection:
        connection = connect(*args, **kwargs)  # type: ignore[arg-type]
        connection.set_trace_callback(statements.append)
        return connection

    monkeypatch.setattr("pubsub_bridge.store.sqlite3.connect", traced)
    store = StateStore(path, horizon_s=60, clock=clock)
    _ = store.scores
    store.seen([image_key("k1")])
    clock.now += 120
    store.prune(limit=10)
    store.close()
    monkeypatch.undo()

    with closing(sqlite3.connect(path)) as check:
        queries = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "DELETE"))]
        assert any(q.startswith("DELETE FROM processed") for q in queries)
        for query in queries:
            plan = " | ".join(row[3] for row in check.execute("EXPLAIN QUERY PLAN " + query))
            assert "SCAN processed" not in plan, (query, plan)


def test_the_rollout_pointer_is_stored_and_read_by_every_replica(open_one: OpenStore) -> None:
    first, second = open_one(), open_one()
    assert first.rollout_state() == RolloutState()  # never set: the default model
    state = RolloutState().shadowed(ModelPointer("v2", "a" * 64)).promoted(ModelPointer("v1", "b" * 64))
    first.set_rollout_state(state)
    assert second.rollout_state() == state


def test_per_model_tally_commits_with_the_totals_and_sums_to_them(open_one: OpenStore) -> None:
    store = open_one()
    first = batch([(1, 1), (2, 3)], rejected=1)
    shadow = ShadowBatch("v2", [1, 2, None], [0.9, 0.8, None])  # agrees on the first image only
    store.commit(first, [image_key("a"), image_key("b"), message_key("m")], "v1", 10, shadow)
    store.commit(batch([(4, 4)]), [image_key("a")], "v2", 10)  # counted before: nothing changes
    store.commit(batch([(5, 5)]), [image_key("c")], "v2", 10)
    scores, tally = store.totals()
    report = tally.report("v2", None)
    assert report["v1"]["live"]["images"] + report["v2"]["live"]["images"] == scores.images == 3
    assert report["v1"]["live"]["rejected"] == scores.report(None)["rejected"] == 1
    assert report["v2"]["shadow"]["compared"] == 2 and report["v2"]["shadow"]["agreed"] == 1
    assert report["v2"]["shadow"]["correct"] == 2  # labels 1, 2: shadow said 1, 2
