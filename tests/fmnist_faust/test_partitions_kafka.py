"""The images topic grown from 4 to 8 partitions mid-stream, on the real broker: refused loudly.

4,000 images are counted, the topic is grown through the admin API and 4,000 more are sent
(keyed by id, so about half land on partitions 4-7, which the changelogs do not have). The
worker must exit with status 4 within the guard's bound, with one CRITICAL line naming the
topics, the counts and the fix; a worker started on that state must refuse at once. After
the fix the line names (changelogs grown to 8, FMNIST_PARTITIONS=8), a worker counts all
8,000 images exactly once: nothing was committed past an uncounted image.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest

from fmnist_faust.config import load_settings
from fmnist_faust.kafka_admin import ensure_topics_sync
from fmnist_faust.partition_guard import CHECK_EVERY_S, EXIT_PARTITIONS
from support import offline_confusion, produce_images, wait_until

pytestmark = pytest.mark.kafka

HALF = 4000


async def _grow(bootstrap: str, topics: list[str], partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_partitions({topic: NewPartitions(partitions) for topic in topics})
    finally:
        await admin.close()


def _refusal(log: str) -> str:
    lines = [line for line in log.splitlines() if "refusing to count" in line]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.timeout(300)
def test_images_topic_grown_mid_stream_is_refused_then_fixed_exactly(
    start_worker: Any, worker_env: dict[str, str], kafka_bootstrap: str, tiny_model: Path, test_split: Any
) -> None:
    env = dict(worker_env, FMNIST_PARTITIONS="4")
    settings = load_settings(env)
    ensure_topics_sync(settings)
    images, labels = test_split.images[: 2 * HALF], test_split.labels[: 2 * HALF].astype(int)
    worker = start_worker(FMNIST_PARTITIONS="4")
    produce_images(kafka_bootstrap, settings.topics.images, images[:HALF], labels[:HALF])
    wait_until(lambda: worker.accuracy()["images"] >= HALF, timeout=60, what="the first 4,000 counted")

    asyncio.run(_grow(kafka_bootstrap, [settings.topics.images], 8))
    grown = time.monotonic()
    produce_images(
        kafka_bootstrap, settings.topics.images, images[HALF:], labels[HALF:], partitions=8, first_index=HALF
    )
    assert worker.proc is not None
    returncode = worker.proc.wait(60)
    refused_after = time.monotonic() - grown
    line = _refusal(worker.log_path.read_text(errors="replace"))
    assert returncode == EXIT_PARTITIONS and refused_after < CHECK_EVERY_S + 10
    changelogs = re.findall(r"--alter --topic (\S+) --partitions 8", line)
    assert len(changelogs) == 4, line
    assert ["scores" in changelogs[0], "seen-ids" in changelogs[1], "label-join" in changelogs[2]] == [True] * 3, line
    assert changelogs[3] == settings.topics.labels, line  # co-partitioned with the images
    assert f"topic {settings.topics.images} has 8 partitions" in line and "have 4" in line
    assert "partitions 4-7 cannot be counted" in line and "FMNIST_PARTITIONS=8" in line

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="refusing to count"):  # it exits before its views answer
        start_worker(FMNIST_PARTITIONS="4")
    refused_at_start = time.monotonic() - started

    asyncio.run(_grow(kafka_bootstrap, changelogs, 8))  # the fix the line names
    fixed = start_worker(FMNIST_PARTITIONS="8")
    wait_until(lambda: fixed.accuracy()["images"] >= 2 * HALF, timeout=120, what="all 8,000 counted")
    time.sleep(2.0)
    report = fixed.accuracy()
    assert report["images"] == 2 * HALF and report["confusion"] == offline_confusion(tiny_model, images, labels)
    print(
        f"\ngrown 4 -> 8: refused (exit {returncode}) {refused_after:.1f} s after the growth, "
        f"{refused_at_start:.1f} s after a fresh start; after the fix {report['images']} counted exactly"
    )
