"""The bridge's durable state: running scores plus the set of messages already counted.

Pub/Sub delivers at least once, so the bridge remembers what it counted: an image by its
id (``id:<image id>``, whether it came alone or in a batch record), a message that broke the
contract by its Pub/Sub message id (``msg:<message id>``), an image of a batch record that
broke it by both (``msg:<message id>#<index>``). One SQLite transaction per batch inserts those keys and rewrites
the scores row, so the counts and the set of counted keys can never disagree, whatever
kills the process. WAL with ``synchronous=FULL``: a committed batch survives a crash of
the process and of the machine.

Replicas: bridges on one machine that share ``images-sub`` also share this file. Each
commit re-reads the scores and the counted keys inside one ``BEGIN IMMEDIATE``
transaction (SQLite serialises writers across processes), so a message that two replicas
both handled (Pub/Sub redelivered it to the other) is counted by whichever commits first
and skipped by the other; the totals stay exact and global. Bridges on several machines
use the PostgreSQL store instead (:mod:`.pgstore`, ``BRIDGE_STATE_URL=postgresql://...``):
both implement :class:`Store`, and :func:`open_store` picks one by the URL.

Dedupe horizon (``FMNIST_DEDUPE_SECONDS``): a key counted longer ago than the horizon no
longer counts as seen, and :meth:`StateStore.prune` deletes such rows in small batches,
each in its own short transaction, through an index on ``processed_at``; so the file
holds about one horizon of keys, not the whole history, and opening it reads nothing but
the schema version. ``setup`` keeps the images subscription's retention within the
horizon, so Pub/Sub cannot redeliver a message after its key left the store.

Delayed labels (:mod:`fmnist_faust.core.labels`): one ``label_join`` row per image id
while it waits (its prediction, its label, or both, and its deadline: first seen + the
wait). An images commit creates or joins the rows of its unlabelled images, a labels
commit (:meth:`StateStore.commit_labels`) those of its labels, recorded by message id
(``lbl:<message id>``) like any message, and :meth:`StateStore.expire_labels` removes rows
whose deadline passed, each in the one transaction that also writes the scores row, so a
join or an expiry is counted exactly once whatever kills the process. Replicas serialise
on the scores row (SQLite's ``BEGIN IMMEDIATE``, PostgreSQL's ``FOR UPDATE``) before they
touch ``label_join``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from fmnist_faust.config import VARIABLES
from fmnist_faust.core.contract import Prediction
from fmnist_faust.core.labels import Entry, Guess, JoinTally, Label, expired, join_batch
from fmnist_faust.core.pipeline import BatchResult
from fmnist_faust.core.registry import RolloutState
from fmnist_faust.core.rollout import ModelTally, ShadowBatch, count_batch
from fmnist_faust.core.scores import Scores

SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    name TEXT PRIMARY KEY,
    model_version TEXT,
    scores TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS processed (
    key TEXT PRIMARY KEY,
    processed_at REAL NOT NULL
) WITHOUT ROWID;
"""
# Schema migrations by ``PRAGMA user_version``: entry n takes a file from version n to n + 1.
# Each runs once per file, inside ``BEGIN IMMEDIATE`` so replicas opening one file agree.
MIGRATIONS = (
    # 0 -> 1: pruning finds expired keys by time without scanning the table.
    "CREATE INDEX IF NOT EXISTS processed_by_time ON processed (processed_at)",
    # 1 -> 2: per-model scores beside the totals, written in the same statement (live rollout).
    "ALTER TABLE scores ADD COLUMN models TEXT",
    # 2 -> 3: the rollout pointer (live / shadow version + SHA-256) the bridges follow.
    "CREATE TABLE IF NOT EXISTS model_pointer (name TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at REAL NOT NULL)",
    # 3 -> 4: delayed labels, one row per image id while it waits (core.labels.Entry).
    "CREATE TABLE IF NOT EXISTS label_join (id TEXT PRIMARY KEY, first_seen REAL NOT NULL, deadline REAL NOT NULL,"
    " predicted INTEGER, model_version TEXT, label INTEGER) WITHOUT ROWID",
    # 4 -> 5: expiry finds the rows whose deadline passed without a scan.
    "CREATE INDEX IF NOT EXISTS label_join_by_deadline ON label_join (deadline)",
)
PRUNE_BATCH = 2000  # rows per delete transaction: a few ms of write lock
EXPIRE_BATCH = 2000  # label_join rows removed per expiry transaction
# The wait of a store opened without one (tests, tools): the configured default, its one source.
DEFAULT_LABEL_WAIT_S = float(VARIABLES["FMNIST_LABEL_WAIT_SECONDS"][0])
ROW = "total"
POINTER = "rollout"  # the one row of the rollout pointer
_QUERY_CHUNK = 500  # well under SQLite's limit on bound parameters


class Store(Protocol):
    """What the bridge needs from its durable state, whatever holds it (SQLite, PostgreSQL).

    The contract, checked on both implementations by ``tests/pubsub_bridge/test_bridge_store.py``:
    :meth:`commit` counts the outcomes whose keys nobody counted within the horizon and
    records those keys, in one transaction with the new totals and per-model tally (the
    live model's part, the shadow's scores); :attr:`scores` are the committed global
    totals, :meth:`totals` the totals and tally of one commit; :meth:`prune` deletes only
    expired keys; :meth:`rollout_state` / :meth:`set_rollout_state` hold the pointer the
    bridges follow. Delayed labels: :meth:`commit` also joins its unlabelled images,
    :meth:`commit_labels` counts the labels (and malformed labels) whose message keys nobody
    counted, :meth:`expire_labels` the ids whose wait is over, each in one transaction with
    the totals; :meth:`waiting` is how many ids the store holds for that. A failure listed in
    :attr:`transient_errors` (database locked, unreachable, restarting) leaves the store as
    it was, and retrying the same call later may succeed.
    """

    horizon_s: float | None
    label_wait_s: float
    longest_prune_s: float
    transient_errors: tuple[type[BaseException], ...]

    @property
    def location(self) -> str:
        """Where the state lives, fit for logs (a URL's password is masked)."""
        ...

    @property
    def scores(self) -> Scores: ...

    @property
    def model_version(self) -> str | None: ...

    def totals(self) -> tuple[Scores, ModelTally]: ...

    def seen(self, keys: Iterable[str]) -> set[str]: ...

    def commit(
        self,
        result: BatchResult,
        keys: Sequence[str],
        model_version: str,
        window_seconds: int,
        shadow: ShadowBatch | None = None,
    ) -> Scores: ...

    def commit_labels(
        self,
        labels: Sequence[Label],
        keys: Sequence[str],
        rejected: Sequence[tuple[str, str]],
        window_seconds: int,
    ) -> Scores: ...

    def expire_labels(self, limit: int = EXPIRE_BATCH) -> int: ...

    def waiting(self) -> int: ...

    def rollout_state(self) -> RolloutState: ...

    def set_rollout_state(self, state: RolloutState) -> None: ...

    def prune(self, limit: int = PRUNE_BATCH) -> int: ...

    def counted(self) -> int: ...

    def schema_version(self) -> int: ...

    def close(self) -> None: ...


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs and error messages)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable state URL>"
    if not password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


# Errors at start that retrying will not fix: say which setting to check.
_CHECK_THE_URL = ("password authentication failed", "does not exist", "no pg_hba.conf entry")


def describe_open_error(url: str, exc: BaseException) -> str:
    """One line for an error opening the store at start, without the URL's password."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        text = text.replace(password, "***")
    hint = ""
    if any(marker in text for marker in _CHECK_THE_URL):
        hint = " (check the user, password and database name in BRIDGE_STATE_URL)"
    return f"cannot open the state store {redact_url(url)}: {text}{hint}"


def sqlite_path(url: str) -> Path:
    """``sqlite:///relative/path`` or ``sqlite:////absolute/path`` -> the file's path."""
    if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
        raise ValueError(f"not a SQLite state URL: {url!r} (use sqlite:///relative or sqlite:////absolute)")
    return Path(url[len("sqlite:///") :])


def open_store(
    url: str,
    horizon_s: float | None = None,
    clock: Callable[[], float] = time.time,
    label_wait_s: float = DEFAULT_LABEL_WAIT_S,
) -> Store:
    """The store ``url`` names: ``sqlite:///path`` or ``postgresql://user:pass@host:port/db``.

    Raises the implementation's error when the store cannot be opened (a file that is not
    a database, bad credentials, a missing database); see :func:`opening_errors`."""
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        return StateStore(sqlite_path(url), horizon_s=horizon_s, clock=clock, label_wait_s=label_wait_s)
    if scheme in ("postgresql", "postgres"):
        from .pgstore import PostgresStore

        return PostgresStore(url, horizon_s=horizon_s, clock=clock, label_wait_s=label_wait_s)
    raise ValueError(f"unknown state store scheme {scheme!r} in {redact_url(url)}: use sqlite:/// or postgresql://")


def _compact(data: object) -> str:
    return json.dumps(data, separators=(",", ":"))


def tally_row(row: Sequence[str | None] | None) -> tuple[str | None, Scores, ModelTally]:
    """(model version, totals, per-model tally) of a scores row ``(model_version, scores, models)``."""
    if not row:
        return None, Scores(), ModelTally()
    version, scores_text, models_text = row
    scores = Scores.from_dict(json.loads(scores_text)) if scores_text else Scores()
    return version, scores, ModelTally.of_record(json.loads(models_text) if models_text else None, scores, version)


def check_commit_keys(result: BatchResult, keys: Sequence[str]) -> None:
    """Both stores' precondition for ``commit``: exactly one distinct key per outcome."""
    if len(keys) != len(result.outcomes) or len(set(keys)) != len(keys):
        raise ValueError("commit needs exactly one distinct key per outcome")


def check_label_keys(labels: Sequence[Label], keys: Sequence[str], rejected: Sequence[tuple[str, str]]) -> None:
    """Both stores' precondition for ``commit_labels``: one distinct key per label and per malformed label."""
    every = [*keys, *(key for key, _ in rejected)]
    if len(keys) != len(labels) or len(set(every)) != len(every):
        raise ValueError("commit_labels needs exactly one distinct key per label and per malformed label")


def image_key(image_id: str) -> str:
    return f"id:{image_id}"


def label_key(message_id: str) -> str:
    """A labels-stream message by its Pub/Sub id: a redelivery is recognised, a re-send is a second label."""
    return f"lbl:{message_id}"


def unlabelled(result: BatchResult, indices: Iterable[int], model_version: str, now: float) -> list[Guess]:
    """The images at ``indices`` of ``result`` counted without a label: they wait for one."""
    guesses = []
    for index in indices:
        outcome = result.outcomes[index]
        if isinstance(outcome, Prediction) and outcome.label is None:
            at = result.messages[index].timestamp
            guesses.append(Guess(outcome.id, outcome.predicted, model_version, now if at is None else at))
    return guesses


JOIN_COLUMNS = "id, first_seen, deadline, predicted, model_version, label"


def join_row(image_id: str, entry: Entry, wait_s: float) -> tuple[Any, ...]:
    """A ``label_join`` row, as :data:`JOIN_COLUMNS`."""
    return (image_id, entry.first_seen, entry.deadline(wait_s), entry.predicted, entry.version, entry.label)


def entry_of(row: Sequence[Any]) -> tuple[str, Entry]:
    """(id, entry) of a ``label_join`` row read as :data:`JOIN_COLUMNS`."""
    image_id, first_seen, _, predicted, version, label = row
    return str(image_id), Entry(float(first_seen), predicted, version, label)


def join_labels(
    entries: dict[str, Entry],
    labels: Sequence[Label],
    counted_images: set[str],
    rejected_kinds: Iterable[str],
) -> tuple[dict[str, Entry], JoinTally]:
    """Both stores' labels commit: ``labels`` (the fresh ones) joined with ``entries`` (the
    rows of their ids), a label for an id in ``counted_images`` and no entry being late, and
    the fresh malformed labels' kinds counted."""
    changes, tally = join_batch(entries.get, [], labels, counted_images.__contains__)
    tally.rejected.update(rejected_kinds)
    return changes, tally


def message_key(message_id: str, index: int | None = None) -> str:
    """A rejected message by its Pub/Sub id; one image of a batch record by the id and its index."""
    return f"msg:{message_id}" if index is None else f"msg:{message_id}#{index}"


class StateStore:
    """Scores and counted keys in one SQLite file, shared by the bridge replicas of a machine.

    :attr:`scores` reads the committed row, so every replica serves the global totals.
    """

    transient_errors: tuple[type[BaseException], ...] = (sqlite3.OperationalError,)

    def __init__(
        self,
        path: Path,
        horizon_s: float | None = None,
        clock: Callable[[], float] = time.time,
        label_wait_s: float = DEFAULT_LABEL_WAIT_S,
    ) -> None:
        """``horizon_s``: how long a counted key counts as seen (None: forever, as before
        the horizon existed); ``label_wait_s``: how long an image id waits for its label or
        image. ``clock`` is injectable so tests can move time."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.horizon_s = horizon_s
        self.label_wait_s = label_wait_s
        self.clock = clock
        self.longest_prune_s = 0.0  # the longest delete transaction so far (soak report)
        self._db_lock = threading.Lock()  # one connection, used from more than one thread
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._migrate()

    @property
    def location(self) -> str:
        return str(self.path)

    def _migrate(self) -> None:
        """Bring the file to the latest schema version; a no-op (one PRAGMA read) when it is."""
        if self.schema_version() >= len(MIGRATIONS):
            return
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
                for step in MIGRATIONS[version:]:
                    self._db.execute(step)
                self._db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def schema_version(self) -> int:
        with self._db_lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _cutoff(self) -> float:
        """Keys processed before this time are expired (-inf without a horizon)."""
        return float("-inf") if self.horizon_s is None else self.clock() - self.horizon_s

    def _row(self) -> tuple[str | None, Scores]:
        version, scores, _ = self._full_row()
        return version, scores

    def _full_row(self) -> tuple[str | None, Scores, ModelTally]:
        row = self._db.execute("SELECT model_version, scores, models FROM scores WHERE name = ?", (ROW,)).fetchone()
        return tally_row(row)

    def totals(self) -> tuple[Scores, ModelTally]:
        """The committed totals and per-model tally, read together (they always sum)."""
        with self._db_lock:
            _, scores, tally = self._full_row()
        return scores, tally

    def rollout_state(self) -> RolloutState:
        with self._db_lock:
            row = self._db.execute("SELECT state FROM model_pointer WHERE name = ?", (POINTER,)).fetchone()
        return RolloutState.from_json(row[0] if row else None)

    def set_rollout_state(self, state: RolloutState) -> None:
        with self._db_lock:
            self._db.execute(
                "INSERT INTO model_pointer (name, state, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                (POINTER, state.to_json(), self.clock()),
            )

    @property
    def scores(self) -> Scores:
        """The committed totals (all replicas' work)."""
        with self._db_lock:
            return self._row()[1]

    @property
    def model_version(self) -> str | None:
        with self._db_lock:
            return self._row()[0]

    def seen(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` already counted."""
        with self._db_lock:
            return self._seen(keys)

    def _seen(self, keys: Iterable[str]) -> set[str]:
        """Keys counted within the horizon; an expired row not pruned yet does not count."""
        wanted = list(dict.fromkeys(keys))
        cutoff = self._cutoff()
        found: set[str] = set()
        for start in range(0, len(wanted), _QUERY_CHUNK):
            chunk = wanted[start : start + _QUERY_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT key FROM processed WHERE key IN ({marks}) AND processed_at >= ?", [*chunk, cutoff]
            ).fetchall()
            found.update(key for (key,) in rows)
        return found

    def commit(
        self,
        result: BatchResult,
        keys: Sequence[str],
        model_version: str,
        window_seconds: int,
        shadow: ShadowBatch | None = None,
    ) -> Scores:
        """Count the outcomes of ``result`` (keyed by ``keys``) that no one counted yet, in
        one transaction, into the totals and under ``model_version`` in the tally (with the
        ``shadow``'s predictions of the same images); a key another replica committed
        meanwhile is skipped. Returns the new totals."""
        check_commit_keys(result, keys)
        now = self.clock()
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                counted = self._seen(keys)
                keep = sorted(i for i, key in enumerate(keys) if key not in counted)
                _, scores, tally = self._full_row()
                count_batch(scores, tally, result, keep, model_version, shadow, window_seconds)
                guesses = unlabelled(result, keep, model_version, now)
                if guesses:
                    entries = self._entries(guess.id for guess in guesses)
                    changes, joins = join_batch(entries.get, guesses, [], lambda image_id: False)
                    self._store_entries(changes)
                    joins.count_into(scores, tally, window_seconds)
                # An expired key counted again (its row not pruned yet) restarts its horizon.
                self._db.executemany(
                    "INSERT INTO processed (key, processed_at) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET processed_at = excluded.processed_at",
                    [(keys[i], now) for i in keep],
                )
                self._write_row(model_version, scores, tally, now)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return scores

    def _write_row(self, model_version: str | None, scores: Scores, tally: ModelTally, now: float) -> None:
        self._db.execute(
            "INSERT INTO scores (name, model_version, scores, models, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET model_version = excluded.model_version, "
            "scores = excluded.scores, models = excluded.models, updated_at = excluded.updated_at",
            (ROW, model_version, _compact(scores.to_dict()), _compact(tally.to_dict()), now),
        )

    def _entries(self, ids: Iterable[str]) -> dict[str, Entry]:
        """The ``label_join`` rows of ``ids`` (inside the caller's transaction)."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, Entry] = {}
        for start in range(0, len(wanted), _QUERY_CHUNK):
            chunk = wanted[start : start + _QUERY_CHUNK]
            rows = self._db.execute(
                f"SELECT {JOIN_COLUMNS} FROM label_join WHERE id IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
            found.update(entry_of(row) for row in rows)
        return found

    def _store_entries(self, changes: dict[str, Entry]) -> None:
        self._db.executemany(
            f"INSERT OR REPLACE INTO label_join ({JOIN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            [join_row(image_id, entry, self.label_wait_s) for image_id, entry in changes.items()],
        )

    def commit_labels(
        self,
        labels: Sequence[Label],
        keys: Sequence[str],
        rejected: Sequence[tuple[str, str]],
        window_seconds: int,
    ) -> Scores:
        """Count the labels (``keys[i]``: the key of ``labels[i]``'s message) and the malformed
        labels (``(key, error kind)``) whose keys nobody counted, in one transaction: joined with
        the waiting images, waiting for theirs, repeated or late (:func:`~fmnist_faust.core.labels.join_batch`).
        Returns the new totals."""
        check_label_keys(labels, keys, rejected)
        now = self.clock()
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                counted = self._seen([*keys, *(key for key, _ in rejected)])
                fresh = [label for label, key in zip(labels, keys) if key not in counted]
                entries = self._entries(label.id for label in fresh)
                missing = {label.id for label in fresh if label.id not in entries}
                images = {key[len("id:") :] for key in self._seen(image_key(image_id) for image_id in missing)}
                changes, joins = join_labels(
                    entries, fresh, images, (kind for key, kind in rejected if key not in counted)
                )
                self._store_entries(changes)
                version, scores, tally = self._full_row()
                joins.count_into(scores, tally, window_seconds)
                self._db.executemany(
                    "INSERT INTO processed (key, processed_at) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET processed_at = excluded.processed_at",
                    [(key, now) for key in [*keys, *(key for key, _ in rejected)] if key not in counted],
                )
                self._write_row(version, scores, tally, now)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return scores

    def expire_labels(self, limit: int = EXPIRE_BATCH) -> int:
        """Remove up to ``limit`` ids whose wait is over, in one transaction with their counts
        (``label_expired``, expired labels); returns how many."""
        now = self.clock()
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    f"SELECT {JOIN_COLUMNS} FROM label_join WHERE deadline < ? ORDER BY deadline LIMIT ?", (now, limit)
                ).fetchall()
                if rows:
                    self._db.executemany("DELETE FROM label_join WHERE id = ?", [(row[0],) for row in rows])
                    version, scores, tally = self._full_row()
                    # an expiry touches no window: the window width does not matter
                    expired([entry for _, entry in map(entry_of, rows)]).count_into(scores, tally, 1)
                    self._write_row(version, scores, tally, now)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(rows)

    def waiting(self) -> int:
        """How many image ids wait (for a label or an image, or joined until their wait ends)."""
        with self._db_lock:
            return int(self._db.execute("SELECT COUNT(*) FROM label_join").fetchone()[0])

    def counted(self) -> int:
        """How many keys (images and rejected messages) the store holds."""
        with self._db_lock:
            return int(self._db.execute("SELECT COUNT(*) FROM processed").fetchone()[0])

    def prune(self, limit: int = PRUNE_BATCH) -> int:
        """Delete up to ``limit`` expired keys in one short transaction; returns how many.

        Only rows older than the horizon go, and those no longer count as seen anyway, so
        replicas pruning one file concurrently cannot change what any of them counts.
        """
        if self.horizon_s is None:
            return 0
        with self._db_lock:
            started = time.perf_counter()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                deleted = self._db.execute(
                    "DELETE FROM processed WHERE key IN (SELECT key FROM processed INDEXED BY processed_by_time "
                    "WHERE processed_at < ? ORDER BY processed_at LIMIT ?)",
                    (self._cutoff(), limit),
                ).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.longest_prune_s = max(self.longest_prune_s, time.perf_counter() - started)
        return int(deleted)

    def close(self) -> None:
        with self._db_lock:
            self._db.close()
