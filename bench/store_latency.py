"""Commit latency of the bridge's state stores: one transaction of 500 new ids + the totals.

    .venv/bin/python -m bench.store_latency [--commits 200] [--ids 500] [--url postgresql://...]

Without ``--url`` a throwaway PostgreSQL is started as the tests do (:mod:`bench.local_postgres`).
Prints p50/p95/p99 in ms for SQLite (WAL, synchronous=FULL, in a temp dir) and PostgreSQL.
The server started here runs with fsync=on (the tests' runs with fsync=off).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from fmnist_faust.core.contract import Prediction
from fmnist_faust.core.pipeline import BatchResult, RawMessage
from pubsub_bridge.store import image_key, open_store

from .local_postgres import LocalPostgres, find_bin_dir


def measure(url: str, commits: int, ids: int) -> list[float]:
    store = open_store(url, horizon_s=3600)
    times = []
    for c in range(commits):
        keys = [image_key(f"c{c}-{i}") for i in range(ids)]
        outcomes: list = [
            Prediction(id=k, predicted=i % 10, confidence=0.9, label=(i * 7) % 10, model_version="m", latency_ms=None)
            for i, k in enumerate(keys)
        ]
        result = BatchResult([RawMessage(b"x", timestamp=time.time()) for _ in keys], outcomes, [None] * ids)
        started = time.perf_counter()
        store.commit(result, keys, "m", 10)
        times.append((time.perf_counter() - started) * 1000)
    store.close()
    return times


def row(name: str, times: list[float]) -> str:
    q = statistics.quantiles(times, n=100)
    return f"| {name} | {len(times)} | {q[49]:.1f} | {q[94]:.1f} | {q[98]:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=200)
    parser.add_argument("--ids", type=int, default=500)
    parser.add_argument("--url", default="", help="an existing PostgreSQL database (default: start one)")
    args = parser.parse_args()
    server = None
    url = args.url
    if not url:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            sys.exit("no PostgreSQL installed (apt-get install postgresql) and no --url")
        server = LocalPostgres(bin_dir, fsync=True).init().start()
        url = server.create_database("bench")
    try:
        with tempfile.TemporaryDirectory() as scratch:
            sqlite_times = measure(f"sqlite:///{scratch}/state.sqlite3", args.commits, args.ids)
        pg_times = measure(url, args.commits, args.ids)
    finally:
        if server is not None:
            server.cleanup()
    print(f"commit of {args.ids} new ids + totals, ms")
    print("| store | commits | p50 | p95 | p99 |\n|---|---:|---:|---:|---:|")
    print(row("SQLite (WAL, synchronous=FULL)", sqlite_times))
    print(row("PostgreSQL 15 (local, fsync=on)", pg_times))


if __name__ == "__main__":
    main()
