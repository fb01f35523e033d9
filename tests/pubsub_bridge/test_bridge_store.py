"""The SQLite state store: counts and counted keys change together, once, across replicas."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fmnist_faust.core.contract import InvalidMessage, Prediction
from fmnist_faust.core.pipeline import BatchResult, RawMessage
from pubsub_bridge.store import StateStore, image_key, message_key


def batch(labels_and_guesses: list[tuple[int | None, int]], rejected: int = 0) -> BatchResult:
    outcomes: list = [
        Prediction(id=f"i{n}", predicted=guess, confidence=0.9, label=label, model_version="m", latency_ms=None)
        for n, (label, guess) in enumerate(labels_and_guesses)
    ]
    outcomes += [InvalidMessage("not_json", "bad") for _ in range(rejected)]
    return BatchResult([RawMessage(b"x", timestamp=100.0) for _ in outcomes], outcomes, [None] * len(outcomes))


def test_commit_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = StateStore(path)
    store.commit(
        batch([(1, 1), (2, 3), (None, 4)], rejected=1),
        [image_key("a"), image_key("b"), image_key("c"), message_key("m1")],
        "v1",
        10,
    )
    assert store.seen([image_key("a"), image_key("z"), message_key("m1")]) == {image_key("a"), message_key("m1")}
    store.close()

    reopened = StateStore(path)
    report = reopened.scores.report(reopened.model_version)
    assert (report["images"], report["labeled"], report["correct"], report["rejected"]) == (3, 2, 1, 1)
    assert report["model_version"] == "v1"
    assert reopened.counted() == 4
    assert reopened.scores.window_series(10) == [
        {"start": 100, "end": 110, "images": 3, "labeled": 2, "correct": 1, "accuracy": 0.5}
    ]
    reopened.close()


def test_a_key_counted_before_is_skipped_and_the_rest_counted(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.sqlite3")
    store.commit(batch([(1, 1)]), [image_key("a")], "v1", 10)
    store.commit(batch([(2, 2), (3, 3)]), [image_key("b"), image_key("a")], "v1", 10)
    assert store.scores.images == 2 and store.counted() == 2
    assert store.seen([image_key("a"), image_key("b")]) == {image_key("a"), image_key("b")}
    store.close()


def test_a_failed_commit_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = StateStore(tmp_path / "state.sqlite3")
    store.commit(batch([(1, 1)]), [image_key("a")], "v1", 10)
    with pytest.raises(sqlite3.IntegrityError):  # a NULL key breaks the NOT NULL primary key
        store.commit(batch([(2, 2), (3, 3)]), [image_key("b"), None], "v1", 10)  # type: ignore[list-item]
    assert store.scores.images == 1 and store.counted() == 1 and store.seen([image_key("b")]) == set()
    store.close()


def test_commit_needs_one_distinct_key_per_outcome(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.sqlite3")
    with pytest.raises(ValueError):
        store.commit(batch([(1, 1), (2, 2)]), [image_key("a"), image_key("a")], "v1", 10)
    with pytest.raises(ValueError):
        store.commit(batch([(1, 1)]), [], "v1", 10)
    store.close()


def test_seen_handles_more_keys_than_one_query_binds(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.sqlite3")
    keys = [image_key(f"k{i}") for i in range(1200)]
    store.commit(batch([(0, 0)] * 1200), keys, "v1", 10)
    assert store.seen(keys + [image_key("new")]) == set(keys)
    store.close()


def test_replicas_sharing_a_store_count_each_key_once(tmp_path: Path) -> None:
    """Two bridges on one file (replicas on images-sub): totals are global and exact."""
    path = tmp_path / "state.sqlite3"
    first, second = StateStore(path), StateStore(path)
    first.commit(batch([(1, 1), (2, 2)]), [image_key("a"), image_key("b")], "v1", 10)
    # the second replica was handed "b" again (a redelivery) together with a new "c"
    second.commit(batch([(2, 2), (3, 0)]), [image_key("b"), image_key("c")], "v1", 10)
    for store in (first, second):
        report = store.scores.report(store.model_version)
        assert (report["images"], report["correct"]) == (3, 2)
        assert store.counted() == 3
    first.close()
    second.close()
