"""Helpers shared by the bench stages: processes, Kafka I/O, statistics, memory."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_faust.netutil import NotReady, free_port, get_json, wait_ready

__all__ = ["free_port"]  # the stages take it from here; defined once in the product
ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- statistics


def percentiles(values_ms: Sequence[float]) -> dict[str, float | int | None]:
    """p50 / p95 / p99 / max (ms) and the sample count."""
    if len(values_ms) == 0:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    array = np.asarray(values_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(array, [50, 95, 99]).tolist()
    return {
        "n": int(array.size),
        "p50": round(p50, 2),
        "p95": round(p95, 2),
        "p99": round(p99, 2),
        "max": round(float(array.max()), 2),
    }


def span_rate(timestamps_ms: Sequence[int]) -> float:
    """Images/s from record timestamps: records after the first one over the first-to-last span.

    Conservative: the first record's own batch is not credited to the span.
    """
    if len(timestamps_ms) < 2:
        return 0.0
    first, last = min(timestamps_ms), max(timestamps_ms)
    after_first = sum(1 for t in timestamps_ms if t > first)
    return after_first / max((last - first) / 1000.0, 1e-3)


# --------------------------------------------------------------------------- processes


def status_mb(pid: int, field: str) -> float | None:
    """A kB field of /proc/PID/status (``VmRSS``, ``VmHWM``) in MiB, None if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        return None
    return None


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) in MiB, None if unreadable."""
    return status_mb(pid, "VmHWM")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process from /proc/PID/stat, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, elapsed) CPU seconds of the whole machine so far, summed over its CPUs, from
    /proc/stat: busy is everything but idle and iowait."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle) / tick, sum(fields) / tick


def local_broker_pid() -> int | None:
    """The pid of the Kafka broker ``tools/services.sh`` started from this checkout, if it runs."""
    try:
        pid = int((ROOT / ".run" / "kafka" / "pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if cpu_seconds(pid) is not None else None


class ServiceProc:
    """A service subprocess (Faust worker or bridge) with a JSON readiness endpoint."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, port: int, ready_path: str) -> None:
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.port = port
        self.ready_path = ready_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ready_s: float | None = None
        self.peak_rss_mb: float | None = None

    @classmethod
    def faust(
        cls, module: str, env: dict[str, str], log_path: Path, port: int, ready_path: str, loop: str | None = None
    ) -> ServiceProc:
        """``faust -A module worker``; ``loop`` (``aio``, ``uvloop``) is Faust's ``-L`` option."""
        argv = [sys.executable, "-m", "faust", *(["-L", loop] if loop else []), "-A", module, "worker", "-l", "warn"]
        return cls(argv, env, log_path, port, ready_path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> Any:
        return get_json(self.url(path), timeout=2.0)

    def start(self, ready_timeout: float = 90.0) -> ServiceProc:
        """Spawn and wait until ``ready_path`` answers 200 with JSON; sets ``ready_s``."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.started_at = time.perf_counter()
        # BENCH_CODE_ROOT: import the worker from another checkout (bench/ab.py's A/B of two trees)
        cwd = self.env.get("BENCH_CODE_ROOT", str(ROOT))
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        log.close()
        try:
            self.ready_s = round(wait_ready(self.proc, self.url(self.ready_path), self.log_path, ready_timeout), 2)
        except NotReady:
            self.stop()
            raise
        return self

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the process (all its threads) has used so far."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        return cpu_seconds(self.proc.pid)

    def sample_rss(self) -> float | None:
        if self.proc is not None and self.proc.poll() is None:
            self.peak_rss_mb = peak_rss_mb(self.proc.pid) or self.peak_rss_mb
        return self.peak_rss_mb

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (after reading peak RSS), then SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.sample_rss()
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# --------------------------------------------------------------------------- Kafka


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _admin(bootstrap: str) -> Any:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    return admin


def create_topics(bootstrap: str, names: Iterable[str], partitions: int) -> None:
    """Create fresh topics (they must not exist: every bench topic name is unique)."""
    from aiokafka.admin import NewTopic

    async def go() -> None:
        admin = await _admin(bootstrap)
        try:
            await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
            for _ in range(100):  # until every partition has a leader (no NotLeader retries)
                described = await admin.describe_topics(list(names))
                if all(
                    len(t.get("partitions", [])) == partitions
                    and all(p.get("leader", -1) >= 0 for p in t["partitions"])
                    for t in described
                ):
                    break
                await asyncio.sleep(0.05)
        finally:
            await admin.close()

    _run(go())


def delete_topics_with_prefix(bootstrap: str, prefix: str) -> list[str]:
    """Remove every topic this run created (names start with the run's unique tag)."""

    async def go() -> list[str]:
        admin = await _admin(bootstrap)
        try:
            names = [t for t in await admin.list_topics() if t.startswith(prefix)]
            if names:
                await admin.delete_topics(names)
            return names
        finally:
            await admin.close()

    return _run(go())


async def _consumer(bootstrap: str, topic: str, **kwargs: Any) -> tuple[Any, list[Any]]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **kwargs)
    await consumer.start()
    partitions = consumer.partitions_for_topic(topic)
    deadline = time.monotonic() + 30
    while not partitions and time.monotonic() < deadline:
        await consumer._client.force_metadata_update()  # a topic created a moment ago
        partitions = consumer.partitions_for_topic(topic)
        await asyncio.sleep(0.1)
    if not partitions:
        await consumer.stop()
        raise RuntimeError(f"topic {topic} has no partitions after 30 s")
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    return consumer, tps


def count_records(bootstrap: str, topic: str) -> int:
    """Sum of end offsets (no transactions in bench topics, so = records written)."""

    async def go() -> int:
        consumer, tps = await _consumer(bootstrap, topic)
        try:
            return int(sum((await consumer.end_offsets(tps)).values()))
        finally:
            await consumer.stop()

    return _run(go())


@dataclass
class Record:
    key: bytes | None
    value: bytes
    timestamp_ms: int


def read_records(bootstrap: str, topic: str, count: int, timeout: float = 120.0) -> list[Record]:
    """Read ``topic`` from the beginning until ``count`` records (or the timeout)."""

    async def go() -> list[Record]:
        consumer, tps = await _consumer(bootstrap, topic, max_partition_fetch_bytes=4 << 20)
        out: list[Record] = []
        try:
            await consumer.seek_to_beginning(*tps)
            deadline = time.monotonic() + timeout
            while len(out) < count and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                for records in batches.values():
                    out.extend(Record(r.key, r.value, r.timestamp) for r in records)
            return out
        finally:
            await consumer.stop()

    return _run(go())


class LiveConsumer:
    """Follows a topic from its end in a background thread, stamping each record on arrival."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.arrivals: list[tuple[bytes | None, float]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._run(bootstrap, topic)), name=f"live-{topic}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"live consumer on {topic} did not start: {self.error!r}")

    async def _run(self, bootstrap: str, topic: str) -> None:
        try:
            consumer, tps = await _consumer(bootstrap, topic, fetch_max_wait_ms=100)
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            raise
        try:
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)
            self._ready.set()
            append = self.arrivals.append
            while not self._stop.is_set():
                batches = await consumer.getmany(timeout_ms=100, max_records=5000)
                now = time.time()
                for records in batches.values():
                    for record in records:
                        append((record.key, now))
        finally:
            await consumer.stop()

    def stop(self) -> list[tuple[bytes | None, float]]:
        self._stop.set()
        self._thread.join(30)
        return self.arrivals


# --------------------------------------------------------------------------- producing


@dataclass
class Sent:
    """What a producer run sent: id -> sent_at (epoch s), and its achieved rate."""

    sent_at: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.sent_at) / self.seconds if self.seconds else 0.0


def produce(
    producer: Any,
    images: np.ndarray,
    labels: np.ndarray,
    count: int,
    prefix: str,
    rate: float = 0.0,
    start_index: int = 0,
    per_record: int = 0,
) -> Sent:
    """Send ``count`` labelled test images through a :class:`fmnist_faust.client.Producer`.

    ``rate`` > 0 paces the sends in 10 ms ticks (offered load); 0 sends as fast as the
    client goes. Each chunk is stamped with ``sent_at`` just before it is handed over.
    ``per_record`` > 0 sends batch records of that many images (``produce_batch``).
    """
    from fmnist_faust.core.contract import encode_image

    sent = Sent()
    chunk = 500 if rate <= 0 else max(1, int(round(rate * 0.01)))
    chunk = max(chunk, per_record)
    started = time.perf_counter()
    done = 0
    while done < count:
        n = min(chunk, count - done)
        if rate > 0:
            wait = started + done / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        now = time.time()
        if per_record:
            for first in range(start_index + done, start_index + done + n, per_record):
                rows = [i % len(labels) for i in range(first, min(first + per_record, start_index + done + n))]
                ids = [f"{prefix}-{first + k:07d}" for k in range(len(rows))]
                producer.produce_batch(ids, images[rows], labels[rows].tolist(), now)
                sent.sent_at.update(dict.fromkeys(ids, now))
            done += n
            continue
        items = []
        for i in range(start_index + done, start_index + done + n):
            j = i % len(labels)
            image_id = f"{prefix}-{i:07d}"
            items.append((encode_image(image_id, images[j], int(labels[j]), now), image_id))
            sent.sent_at[image_id] = now
        producer.produce_many(items)
        done += n
    producer.flush()
    sent.seconds = time.perf_counter() - started
    return sent


def wait_until(predicate: Any, timeout: float, interval: float = 0.02) -> float | None:
    """Poll ``predicate()`` until true; the perf_counter time it became true, or None."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            if predicate():
                return time.perf_counter()
        except (OSError, ValueError):
            pass
        time.sleep(interval)
    return None


def env_with(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    return env
