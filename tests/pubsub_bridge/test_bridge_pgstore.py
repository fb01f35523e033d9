"""What only the PostgreSQL store has: several writers on one database, the schema version
table, the pruning lock, surviving a server restart, and a password that never shows.

The contract shared with SQLite is tested on both in test_bridge_store.py.
"""

from __future__ import annotations

import threading

import psycopg
import pytest

from bench.local_postgres import PASSWORD, LocalPostgres
from fmnist_faust.core.contract import Prediction
from fmnist_faust.core.pipeline import BatchResult, RawMessage
from pubsub_bridge.pgstore import MIGRATIONS, PRUNE_LOCK, PostgresStore
from pubsub_bridge.store import describe_open_error, image_key, open_store


def batch_for(keys: list[str]) -> BatchResult:
    """One labelled prediction per key; label = guess = len(key) % 10 (so the totals are checkable)."""
    outcomes: list = [
        Prediction(id=k, predicted=len(k) % 10, confidence=0.9, label=len(k) % 10, model_version="m", latency_ms=None)
        for k in keys
    ]
    return BatchResult([RawMessage(b"x", timestamp=100.0) for _ in keys], outcomes, [None] * len(keys))


def test_schema_is_created_once_and_recorded(pg_url: str) -> None:
    first = PostgresStore(pg_url)
    second = PostgresStore(pg_url)  # a replica starting later: migration is a no-op
    assert first.schema_version() == second.schema_version() == len(MIGRATIONS)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM bridge_schema_version").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM bridge_scores").fetchone() == (1,)
    first.close()
    second.close()


def test_replicas_starting_together_migrate_once(pg_url: str) -> None:
    errors: list[BaseException] = []
    stores: list[PostgresStore] = []

    def start() -> None:
        try:
            stores.append(PostgresStore(pg_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(stores) == 4
    assert {s.schema_version() for s in stores} == {len(MIGRATIONS)}
    for store in stores:
        store.close()


def test_competing_writers_with_overlapping_ids_stay_exact(pg_url: str) -> None:
    """Four replicas commit overlapping batches at once (each id offered by two or three of
    them, in different orders): every id is counted exactly once, no deadlock."""
    ids = [f"k{i:04d}" for i in range(2000)]
    stores = [PostgresStore(pg_url) for _ in range(4)]
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        mine = ids[n * 400 : n * 400 + 800] + ids[::7]  # overlaps its neighbour and everyone
        mine = list(dict.fromkeys(mine))
        if n % 2:
            mine.reverse()
        try:
            for start in range(0, len(mine), 100):
                keys = [image_key(k) for k in mine[start : start + 100]]
                stores[n].commit(batch_for(keys), keys, "v1", 10)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    offered = {k for n in range(4) for k in ids[n * 400 : n * 400 + 800] + ids[::7]}
    for store in stores:
        assert store.counted() == len(offered)
        assert store.scores.images == len(offered) == store.scores.correct
    for store in stores:
        store.close()


def test_one_replica_prunes_at_a_time(pg_url: str) -> None:
    now = [1_000_000.0]
    store = PostgresStore(pg_url, horizon_s=10, clock=lambda: now[0])
    keys = [image_key(f"k{i}") for i in range(30)]
    store.commit(batch_for(keys), keys, "v1", 10)
    now[0] += 20
    with psycopg.connect(pg_url) as other:  # another replica is pruning
        other.execute("SELECT pg_advisory_lock(%s)", (PRUNE_LOCK,))
        assert store.prune(limit=10) == 0
        other.execute("SELECT pg_advisory_unlock(%s)", (PRUNE_LOCK,))
    assert [store.prune(limit=10) for _ in range(4)] == [10, 10, 10, 0]
    assert store.scores.images == 30
    store.close()


def test_a_server_restart_is_a_transient_error_then_the_store_reconnects(postgres: LocalPostgres, pg_url: str) -> None:
    store = PostgresStore(pg_url)
    store.commit(batch_for([image_key("a")]), [image_key("a")], "v1", 10)
    postgres.restart()  # cuts every connection
    keys = [image_key("b"), image_key("a")]
    with pytest.raises(store.transient_errors):
        store.commit(batch_for(keys), keys, "v1", 10)  # on the dead connection: fails, changes nothing
    assert store.scores.images == 1  # reconnected by itself
    store.commit(batch_for(keys), keys, "v1", 10)  # the retried batch: "a" skipped, "b" counted
    assert store.scores.images == 2 and store.counted() == 2
    store.close()


def test_the_password_never_shows(postgres: LocalPostgres, pg_url: str) -> None:
    store = open_store(pg_url)
    assert PASSWORD not in store.location and "***" in store.location
    assert PASSWORD not in repr(store.__dict__.get("location", "")) and f":{postgres.port}/" in store.location
    store.close()


@pytest.mark.parametrize("what", ["password", "database"])
def test_bad_credentials_or_a_missing_database_fail_at_open(postgres: LocalPostgres, what: str) -> None:
    url = postgres.url(password="wrong-pw") if what == "password" else postgres.url(database="no_such_db")
    with pytest.raises(psycopg.OperationalError) as raised:
        open_store(url)
    message = describe_open_error(url, raised.value)
    assert "wrong-pw" not in message and PASSWORD not in message
    assert ("password authentication failed" if what == "password" else "does not exist") in message
    assert "BRIDGE_STATE_URL" in message
