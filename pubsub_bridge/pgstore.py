"""The bridge's state in PostgreSQL, shared by replicas on several machines (a fleet).

Same contract as the SQLite :class:`~.store.StateStore` (see :class:`~.store.Store`), with
the database as the one place the replicas meet:

- :meth:`PostgresStore.commit` is one READ COMMITTED transaction: insert the batch's keys
  (sorted, so two replicas inserting overlapping keys take their row locks in the same
  order and cannot deadlock) with ``INSERT ... SELECT unnest(%s::text[]) ON CONFLICT ...
  RETURNING key``; the keys it returns are the ones nobody counted within the horizon. A key
  another replica is inserting at the same moment makes this insert wait for that
  transaction, then count the key only if that one rolled back. Then ``SELECT ... FOR
  UPDATE`` on the scores row (waits for any other replica's commit in flight, then reads its
  totals), add the returned keys' outcomes, write the row, COMMIT. So the totals and the
  set of counted keys change together, and every replica reads the global totals.
- A key older than the horizon no longer counts (``processed_at >= cutoff`` in
  :meth:`seen`; the insert re-stamps an expired key and counts it again), exactly as in
  SQLite. :meth:`prune` deletes expired keys in small batches, each its own transaction
  holding ``pg_try_advisory_xact_lock``: one replica prunes at a time, the others skip the
  round. Rows being re-stamped by a commit are skipped (``FOR UPDATE SKIP LOCKED``), so
  pruning never waits for a commit and cannot deadlock with one.
- The schema is created and migrated at start, under an advisory lock, recorded in
  ``bridge_schema_version``; opening an up-to-date database reads one row.
- Faults: a lost connection (the database restarting, a failover, a network cut) raises
  ``psycopg.OperationalError`` (a :attr:`transient_errors` member) and drops the
  connection; the next call reconnects. A commit whose COMMIT was sent but whose answer
  was lost is harmless: retrying the batch finds its keys counted and acks it.
- Delayed labels: ``bridge_label_join`` as SQLite's ``label_join``. Every transaction
  that reads or writes it has locked the scores row first (``FOR UPDATE``), so replicas
  join and expire ids one at a time; a labels commit inserts its message keys first, like an
  images commit, so a label two replicas both handle is counted by one.
- Time: ``processed_at`` is the bridge's clock (epoch seconds), as in SQLite; replicas
  need synchronised clocks (NTP; Google Cloud's metadata server), a skew of seconds is
  nothing next to a horizon of an hour.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from fmnist_faust.core.labels import Entry, Label, expired, join_batch
from fmnist_faust.core.pipeline import BatchResult
from fmnist_faust.core.registry import RolloutState
from fmnist_faust.core.rollout import ModelTally, ShadowBatch, count_batch
from fmnist_faust.core.scores import Scores

from .store import (
    DEFAULT_LABEL_WAIT_S,
    EXPIRE_BATCH,
    JOIN_COLUMNS,
    POINTER,
    PRUNE_BATCH,
    ROW,
    check_commit_keys,
    check_label_keys,
    entry_of,
    image_key,
    join_labels,
    join_row,
    redact_url,
    tally_row,
    unlabelled,
)

# Schema migrations: entry n takes a database from version n to n + 1 (one transaction each).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE IF NOT EXISTS bridge_scores ("
        " name text PRIMARY KEY, model_version text, scores text NOT NULL, updated_at double precision NOT NULL)",
        "CREATE TABLE IF NOT EXISTS bridge_processed (key text PRIMARY KEY, processed_at double precision NOT NULL)",
        "CREATE INDEX IF NOT EXISTS bridge_processed_by_time ON bridge_processed (processed_at)",
    ),
    (  # live rollout: per-model scores beside the totals, and the pointer the bridges follow
        "ALTER TABLE bridge_scores ADD COLUMN IF NOT EXISTS models text",
        "CREATE TABLE IF NOT EXISTS bridge_model_pointer ("
        " name text PRIMARY KEY, state text NOT NULL, updated_at double precision NOT NULL)",
    ),
    (  # delayed labels: one row per image id while it waits (core.labels.Entry)
        "CREATE TABLE IF NOT EXISTS bridge_label_join (id text PRIMARY KEY, first_seen double precision NOT NULL,"
        " deadline double precision NOT NULL, predicted integer, model_version text, label integer)",
        "CREATE INDEX IF NOT EXISTS bridge_label_join_by_deadline ON bridge_label_join (deadline)",
    ),
)
# Advisory lock keys (64-bit, arbitrary but fixed): schema migration, pruning.
MIGRATE_LOCK = 0x666D6E697374_01
PRUNE_LOCK = 0x666D6E697374_02
CONNECT_TIMEOUT_S = 5
# Errors that mean "not now": connection lost or refused, server shutting down, deadlock or
# serialization failure (all psycopg.OperationalError subclasses).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (psycopg.OperationalError,)


class PostgresStore:
    """Scores and counted keys in PostgreSQL; see the module docstring."""

    transient_errors = TRANSIENT_ERRORS

    def __init__(
        self,
        url: str,
        horizon_s: float | None = None,
        clock: Callable[[], float] = time.time,
        label_wait_s: float = DEFAULT_LABEL_WAIT_S,
    ) -> None:
        """Connects and migrates the schema; raises ``psycopg.Error`` when it cannot (bad
        credentials, a missing database, nobody listening)."""
        self._url = url
        self.horizon_s = horizon_s
        self.label_wait_s = label_wait_s
        self.clock = clock
        self.longest_prune_s = 0.0
        self._lock = threading.Lock()  # one connection, used by the batcher, the pruner and the web thread
        self._conn: psycopg.Connection[Any] | None = None
        with self._lock:
            self._migrate()

    @property
    def location(self) -> str:
        return redact_url(self._url)

    # -- connection --------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self._url,
                autocommit=True,  # reads are single statements; writes open a transaction explicitly
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name="fmnist-bridge",
                # Notice a dead server or network within ~1 min instead of hanging on it.
                keepalives=1,
                keepalives_idle=20,
                keepalives_interval=5,
                keepalives_count=4,
            )
        return self._conn

    @contextmanager
    def _using(self) -> Iterator[psycopg.Connection[Any]]:
        """The connection, under the lock; a connection-level failure drops it (the next
        call reconnects) and propagates for the caller to retry."""
        with self._lock:
            conn = self._connection()
            try:
                yield conn
            except psycopg.OperationalError:
                self._drop()
                raise

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # closing a broken connection: nothing more to learn
                pass
            self._conn = None

    def _migrate(self) -> None:
        conn = self._connection()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS bridge_schema_version (version integer NOT NULL)")
            row = conn.execute("SELECT version FROM bridge_schema_version").fetchone()
            version = 0 if row is None else int(row[0])
            for steps in MIGRATIONS[version:]:
                for step in steps:
                    conn.execute(step)
            if row is None:
                conn.execute("INSERT INTO bridge_schema_version (version) VALUES (%s)", (len(MIGRATIONS),))
            elif version < len(MIGRATIONS):
                conn.execute("UPDATE bridge_schema_version SET version = %s", (len(MIGRATIONS),))
            # The scores row exists before any commit, so every commit locks it (FOR UPDATE):
            # two replicas' first commits cannot both start from empty totals.
            conn.execute(
                "INSERT INTO bridge_scores (name, model_version, scores, updated_at) VALUES (%s, NULL, %s, 0) "
                "ON CONFLICT (name) DO NOTHING",
                (ROW, json.dumps(Scores().to_dict(), separators=(",", ":"))),
            )

    def schema_version(self) -> int:
        with self._using() as conn:
            row = conn.execute("SELECT version FROM bridge_schema_version").fetchone()
            return 0 if row is None else int(row[0])

    # -- reads -------------------------------------------------------------------------

    def _claim(self, conn: psycopg.Connection[Any], keys: Sequence[str], now: float) -> set[str]:
        """Stamp ``keys`` processed at ``now``; returns those not processed within the horizon.
        An expired key (older than the horizon, not pruned yet) is re-stamped and counted; keys
        are inserted in sorted order so concurrent replicas lock them in the same order."""
        inserted = conn.execute(
            "INSERT INTO bridge_processed (key, processed_at) "
            "SELECT k, %(now)s FROM unnest(%(keys)s::text[]) AS k ORDER BY k "
            "ON CONFLICT (key) DO UPDATE SET processed_at = excluded.processed_at "
            "WHERE bridge_processed.processed_at < %(cutoff)s RETURNING key",
            {"now": now, "keys": sorted(keys), "cutoff": self._cutoff()},
        ).fetchall()
        return {key for (key,) in inserted}

    def _cutoff(self) -> float:
        return float("-inf") if self.horizon_s is None else self.clock() - self.horizon_s

    @staticmethod
    def _row(conn: psycopg.Connection[Any], lock: bool = False) -> tuple[str | None, Scores, ModelTally]:
        query = "SELECT model_version, scores, models FROM bridge_scores WHERE name = %s" + (
            " FOR UPDATE" if lock else ""
        )
        return tally_row(conn.execute(query, (ROW,)).fetchone())

    def totals(self) -> tuple[Scores, ModelTally]:
        """The committed totals and per-model tally, read in one statement."""
        with self._using() as conn:
            _, scores, tally = self._row(conn)
        return scores, tally

    def rollout_state(self) -> RolloutState:
        with self._using() as conn:
            row = conn.execute("SELECT state FROM bridge_model_pointer WHERE name = %s", (POINTER,)).fetchone()
        return RolloutState.from_json(row[0] if row else None)

    def set_rollout_state(self, state: RolloutState) -> None:
        with self._using() as conn:
            conn.execute(
                "INSERT INTO bridge_model_pointer (name, state, updated_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                (POINTER, state.to_json(), self.clock()),
            )

    @property
    def scores(self) -> Scores:
        """The committed totals of every replica."""
        with self._using() as conn:
            return self._row(conn)[1]

    @property
    def model_version(self) -> str | None:
        with self._using() as conn:
            return self._row(conn)[0]

    def seen(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` counted within the horizon."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return set()
        with self._using() as conn:
            rows = conn.execute(
                "SELECT key FROM bridge_processed WHERE key = ANY(%s::text[]) AND processed_at >= %s",
                (wanted, self._cutoff()),
            ).fetchall()
        return {key for (key,) in rows}

    def counted(self) -> int:
        with self._using() as conn:
            row = conn.execute("SELECT count(*) FROM bridge_processed").fetchone()
            return int(row[0]) if row else 0

    # -- writes ------------------------------------------------------------------------

    def commit(
        self,
        result: BatchResult,
        keys: Sequence[str],
        model_version: str,
        window_seconds: int,
        shadow: ShadowBatch | None = None,
    ) -> Scores:
        """Count the outcomes of ``result`` (keyed by ``keys``) that nobody counted within the
        horizon, in one transaction with the new totals and the per-model tally (``shadow``:
        the shadow's predictions of the same images); returns the totals."""
        check_commit_keys(result, keys)
        now = self.clock()
        with self._using() as conn:
            with conn.transaction():
                fresh = self._claim(conn, keys, now)
                _, scores, tally = self._row(conn, lock=True)
                counted = [i for i, key in enumerate(keys) if key in fresh]
                count_batch(scores, tally, result, counted, model_version, shadow, window_seconds)
                guesses = unlabelled(result, counted, model_version, now)
                if guesses:  # the scores row is locked: no other replica touches label_join now
                    entries = self._entries(conn, [guess.id for guess in guesses])
                    changes, joins = join_batch(entries.get, guesses, [], lambda image_id: False)
                    self._store_entries(conn, changes)
                    joins.count_into(scores, tally, window_seconds)
                self._write_row(conn, model_version, scores, tally, now)
        return scores

    @staticmethod
    def _write_row(
        conn: psycopg.Connection[Any], model_version: str | None, scores: Scores, tally: ModelTally, now: float
    ) -> None:
        conn.execute(
            "INSERT INTO bridge_scores (name, model_version, scores, models, updated_at) "
            "VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET model_version = excluded.model_version, "
            "scores = excluded.scores, models = excluded.models, updated_at = excluded.updated_at",
            (
                ROW,
                model_version,
                json.dumps(scores.to_dict(), separators=(",", ":")),
                json.dumps(tally.to_dict(), separators=(",", ":")),
                now,
            ),
        )

    @staticmethod
    def _entries(conn: psycopg.Connection[Any], ids: list[str]) -> dict[str, Entry]:
        rows = conn.execute(
            f"SELECT {JOIN_COLUMNS} FROM bridge_label_join WHERE id = ANY(%s::text[])", (list(dict.fromkeys(ids)),)
        ).fetchall()
        return dict(entry_of(row) for row in rows)

    def _store_entries(self, conn: psycopg.Connection[Any], changes: dict[str, Entry]) -> None:
        if not changes:
            return
        with conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO bridge_label_join ({JOIN_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET first_seen = excluded.first_seen, deadline = excluded.deadline, "
                "predicted = excluded.predicted, model_version = excluded.model_version, label = excluded.label",
                [join_row(image_id, entry, self.label_wait_s) for image_id, entry in sorted(changes.items())],
            )

    def commit_labels(
        self,
        labels: Sequence[Label],
        keys: Sequence[str],
        rejected: Sequence[tuple[str, str]],
        window_seconds: int,
    ) -> Scores:
        """As :meth:`.store.StateStore.commit_labels`: the labels and malformed labels whose message
        keys nobody counted, in one transaction with the totals; returns them."""
        check_label_keys(labels, keys, rejected)
        now = self.clock()
        all_keys = [*keys, *(key for key, _ in rejected)]
        with self._using() as conn:
            with conn.transaction():
                new = self._claim(conn, all_keys, now)
                version, scores, tally = self._row(conn, lock=True)
                fresh = [label for label, key in zip(labels, keys) if key in new]
                entries = self._entries(conn, [label.id for label in fresh])
                missing = [image_key(label.id) for label in fresh if label.id not in entries]
                images = {
                    key[len("id:") :]
                    for (key,) in conn.execute(
                        "SELECT key FROM bridge_processed WHERE key = ANY(%s::text[]) AND processed_at >= %s",
                        (missing, self._cutoff()),
                    ).fetchall()
                }
                changes, joins = join_labels(entries, fresh, images, (kind for key, kind in rejected if key in new))
                self._store_entries(conn, changes)
                joins.count_into(scores, tally, window_seconds)
                self._write_row(conn, version, scores, tally, now)
        return scores

    def expire_labels(self, limit: int = EXPIRE_BATCH) -> int:
        """Remove up to ``limit`` ids whose wait is over, in one transaction with their counts."""
        now = self.clock()
        with self._using() as conn:
            with conn.transaction():
                version, scores, tally = self._row(conn, lock=True)
                rows = conn.execute(
                    f"DELETE FROM bridge_label_join WHERE id IN (SELECT id FROM bridge_label_join WHERE deadline < %s "
                    f"ORDER BY deadline LIMIT %s) RETURNING {JOIN_COLUMNS}",
                    (now, limit),
                ).fetchall()
                if rows:
                    expired([entry for _, entry in map(entry_of, rows)]).count_into(scores, tally, 1)
                    self._write_row(conn, version, scores, tally, now)
        return len(rows)

    def waiting(self) -> int:
        with self._using() as conn:
            row = conn.execute("SELECT count(*) FROM bridge_label_join").fetchone()
            return int(row[0]) if row else 0

    def prune(self, limit: int = PRUNE_BATCH) -> int:
        """Delete up to ``limit`` expired keys in one short transaction; returns how many
        (0 as well when another replica holds the pruning lock)."""
        if self.horizon_s is None:
            return 0
        with self._using() as conn:
            started = time.perf_counter()
            with conn.transaction():
                row = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (PRUNE_LOCK,)).fetchone()
                if not row or not row[0]:
                    return 0
                cutoff = self._cutoff()
                deleted = conn.execute(
                    "DELETE FROM bridge_processed WHERE key IN ("
                    " SELECT key FROM bridge_processed WHERE processed_at < %(cutoff)s"
                    " ORDER BY processed_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
                    " AND processed_at < %(cutoff)s",
                    {"cutoff": cutoff, "limit": limit},
                ).rowcount
            self.longest_prune_s = max(self.longest_prune_s, time.perf_counter() - started)
        return int(deleted)

    def close(self) -> None:
        with self._lock:
            self._drop()
