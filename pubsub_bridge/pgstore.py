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

from fmnist_faust.core.pipeline import BatchResult
from fmnist_faust.core.registry import RolloutState
from fmnist_faust.core.rollout import ModelTally, ShadowBatch, count_batch
from fmnist_faust.core.scores import Scores

from .store import POINTER, PRUNE_BATCH, ROW, check_commit_keys, redact_url, tally_row

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

    def __init__(self, url: str, horizon_s: float | None = None, clock: Callable[[], float] = time.time) -> None:
        """Connects and migrates the schema; raises ``psycopg.Error`` when it cannot (bad
        credentials, a missing database, nobody listening)."""
        self._url = url
        self.horizon_s = horizon_s
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
                # An expired key (older than the horizon, not pruned yet) is re-stamped and counted.
                inserted = conn.execute(
                    "INSERT INTO bridge_processed (key, processed_at) "
                    "SELECT k, %(now)s FROM unnest(%(keys)s::text[]) AS k ORDER BY k "
                    "ON CONFLICT (key) DO UPDATE SET processed_at = excluded.processed_at "
                    "WHERE bridge_processed.processed_at < %(cutoff)s RETURNING key",
                    {"now": now, "keys": sorted(keys), "cutoff": self._cutoff()},
                ).fetchall()
                fresh = {key for (key,) in inserted}
                _, scores, tally = self._row(conn, lock=True)
                counted = [i for i, key in enumerate(keys) if key in fresh]
                count_batch(scores, tally, result, counted, model_version, shadow, window_seconds)
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
        return scores

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
