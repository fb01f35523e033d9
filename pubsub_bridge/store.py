"""The bridge's durable state: running scores plus the set of messages already counted.

Pub/Sub delivers at least once, so the bridge remembers what it counted: an image by its
id (``id:<image id>``), a message that broke the contract by its Pub/Sub message id
(``msg:<message id>``). One SQLite transaction per batch inserts those keys and rewrites
the scores row, so the counts and the set of counted keys can never disagree, whatever
kills the process. WAL with ``synchronous=FULL``: a committed batch survives a crash of
the process and of the machine.

One process owns a store: a lock file beside it (``flock``, released by the kernel even
on SIGKILL) stops a second bridge from counting into the same totals.
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

from fmnist_faust.core.pipeline import BatchResult
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
ROW = "total"
_QUERY_CHUNK = 500  # well under SQLite's limit on bound parameters


class StoreLocked(RuntimeError):
    """Another process already owns this state store."""


def image_key(image_id: str) -> str:
    return f"id:{image_id}"


def message_key(message_id: str) -> str:
    return f"msg:{message_id}"


class StateStore:
    """Scores and counted keys in one SQLite file; written by one thread, read by any.

    :attr:`scores` is replaced, never mutated, on each commit, so readers (the web
    thread) get a consistent snapshot without taking a lock.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.path.with_name(self.path.name + ".lock"), "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise StoreLocked(f"{self.path} is in use by another bridge process") from None
        self._db_lock = threading.Lock()  # one connection, used from more than one thread
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        row = self._db.execute("SELECT model_version, scores FROM scores WHERE name = ?", (ROW,)).fetchone()
        self.model_version: str | None = row[0] if row else None
        self.scores: Scores = Scores.from_dict(json.loads(row[1])) if row else Scores()

    def seen(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` already counted."""
        wanted = list(dict.fromkeys(keys))
        found: set[str] = set()
        for start in range(0, len(wanted), _QUERY_CHUNK):
            chunk = wanted[start:start + _QUERY_CHUNK]
            marks = ",".join("?" * len(chunk))
            with self._db_lock:
                rows = self._db.execute(f"SELECT key FROM processed WHERE key IN ({marks})", chunk).fetchall()
            found.update(key for (key,) in rows)
        return found

    def commit(self, result: BatchResult, keys: Sequence[str], model_version: str, window_seconds: int) -> Scores:
        """Count ``result`` (whose outcomes are keyed by ``keys``) in one transaction.

        A key counted before makes the whole transaction fail (primary key), so a bug
        upstream can never count anything twice. Returns the new scores.
        """
        if len(keys) != len(result.outcomes) or len(set(keys)) != len(keys):
            raise ValueError("commit needs exactly one distinct key per outcome")
        scores = Scores.from_dict(self.scores.to_dict())
        result.apply_to(scores, window_seconds)
        now = time.time()
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO processed (key, processed_at) VALUES (?, ?)",
                                     [(key, now) for key in keys])
                self._db.execute(
                    "INSERT INTO scores (name, model_version, scores, updated_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET model_version = excluded.model_version, "
                    "scores = excluded.scores, updated_at = excluded.updated_at",
                    (ROW, model_version, json.dumps(scores.to_dict(), separators=(",", ":")), now))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.scores = scores
            self.model_version = model_version
        return scores

    def counted(self) -> int:
        """How many keys (images and rejected messages) the store holds."""
        with self._db_lock:
            return int(self._db.execute("SELECT COUNT(*) FROM processed").fetchone()[0])

    def close(self) -> None:
        with self._db_lock:
            self._db.close()
        self._lock_file.close()

