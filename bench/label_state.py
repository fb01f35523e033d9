"""What one waiting image id costs in the label join, on each backend (docs/labels.md).

    .venv/bin/python -m bench.label_state [--ids 200000] [--url postgresql://...]

- the Kafka worker's memory per id: ``tracemalloc`` over the join state of one partition
  built as a worker builds it, live (a batch's entries, its chunk remembered) and after a
  restart (every chunk recovered from its changelog JSON, then the state rebuilt from the
  chain), ids ``test-000123`` and a model version ``mlp-74c614f89d1f``;
- the changelog's bytes per id: the JSON of the chunks (key and value);
- the bridge's bytes per id: SQLite's ``label_join`` table and index (``dbstat``), and
  PostgreSQL's ``bridge_label_join`` with ``--url``, after as many unlabelled images.
"""

from __future__ import annotations

import argparse
import gc
import json
import sqlite3
import tempfile
import time
import tracemalloc
from contextlib import closing
from pathlib import Path

from fmnist_faust.core.contract import Prediction
from fmnist_faust.core.labels import Entry
from fmnist_faust.core.pipeline import BatchResult, RawMessage
from fmnist_faust.join_state import Chunk, JoinChunks, PartitionJoin, chunk_of, chunk_value
from pubsub_bridge.store import image_key, open_store

VERSION = "mlp-74c614f89d1f"
BATCH = 1000
WAIT_S = 3600.0


def _ids(count: int) -> list[str]:
    return [f"test-{n:06d}" for n in range(count)]


def worker_memory(count: int) -> dict[str, float]:
    """Bytes per waiting id in a worker's memory, live and recovered; bytes per id of the changelog."""
    ids, now = _ids(count), time.time()
    gc.collect()
    tracemalloc.start()
    chunks, state = JoinChunks(), PartitionJoin(WAIT_S)
    values: list[tuple[str, bytes]] = []
    for start in range(0, count, BATCH):
        changes = {
            i: Entry(now + start / 1000, n % 10, VERSION, None) for n, i in enumerate(ids[start : start + BATCH])
        }
        state.apply(changes)
        key = f"0@bench.{start}"
        chunks.remember(key, Chunk(now, state.head, list(changes), list(changes.values())))
        values.append((key, json.dumps(chunk_value(0, now, state.head, list(changes.items()))).encode()))
        state.head = key
    live = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    changelog = sum(len(json.dumps(key)) + len(value) for key, value in values)
    head = state.head
    del chunks, state
    gc.collect()
    tracemalloc.start()
    recovered = JoinChunks()
    for key, value in values:
        recovered.remember(key, chunk_of(json.loads(value)))
    rebuilt = PartitionJoin(WAIT_S)
    rebuilt.rebuild(recovered.chain(0, head), head, now, "stamp")
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(rebuilt) == count
    return {
        "worker_live_bytes": live / count,
        "worker_recovered_bytes": after / count,
        "changelog_bytes": changelog / count,
    }


def bridge_bytes(url: str, count: int) -> float:
    """Bytes per waiting id in the store's label-join table (and its index)."""
    store = open_store(url, label_wait_s=WAIT_S)
    ids = _ids(count)
    for start in range(0, count, BATCH):
        part = ids[start : start + BATCH]
        outcomes: list = [Prediction(i, n % 10, 0.9, None, VERSION, None) for n, i in enumerate(part)]
        result = BatchResult([RawMessage(b"x", timestamp=time.time()) for _ in part], outcomes, [None] * len(part))
        store.commit(result, [image_key(i) for i in part], VERSION, 10)
    assert store.waiting() == count
    store.close()
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(url[len("sqlite:///") :])) as db:
            (size,) = db.execute(
                "SELECT SUM(pgsize) FROM dbstat WHERE name IN ('label_join', 'label_join_by_deadline')"
            ).fetchone()
    else:
        import psycopg

        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT pg_total_relation_size('bridge_label_join')").fetchone()
            size = row[0] if row else 0
    return float(size) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ids", type=int, default=200_000, help="waiting ids to measure with (default %(default)s)")
    parser.add_argument("--url", help="also a PostgreSQL store: postgresql://USER:PASSWORD@HOST:PORT/DB (emptied)")
    args = parser.parse_args(argv)
    figures = worker_memory(args.ids)
    with tempfile.TemporaryDirectory() as scratch:
        figures["sqlite_bytes"] = bridge_bytes(f"sqlite:///{Path(scratch) / 'state.sqlite3'}", args.ids)
    if args.url:
        figures["postgresql_bytes"] = bridge_bytes(args.url, args.ids)
    print(json.dumps({"ids": args.ids, **{k: round(v, 1) for k, v in figures.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
