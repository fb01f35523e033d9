"""Create the contract's Kafka topics with the configured partition count."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .config import Settings

log = logging.getLogger(__name__)
RETRY_FOR_S = 30.0  # a broker that just came back (restart, long pause) answers within this
VISIBLE_WITHIN_S = 30.0  # a topic just created has a leader in the metadata within this


async def wait_until_visible(admin: Any, topics: list[str], timeout_s: float = VISIBLE_WITHIN_S) -> None:
    """Wait until every partition of ``topics`` has a leader in the cluster metadata.

    A topic is created before every broker's metadata knows it; a client that reads or
    writes it meanwhile logs "Topic ... not found in cluster metadata" at ERROR on each
    refresh (aiokafka's ``ClusterMetadata``). The admin client's own metadata request
    logs nothing, so ask it until the topics are there (or ``timeout_s`` passed: then
    the clients wait, as before).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        described = await admin.describe_topics(topics)
        if len(described) == len(topics) and all(
            t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
            for t in described
        ):
            return
        await asyncio.sleep(0.1)


async def ensure_topics(settings: Settings, retry_for_s: float = RETRY_FOR_S) -> None:
    """Idempotently create ``images``, ``labels``, ``predictions`` and ``images-dlq``.

    Retriable broker errors (no leader or controller known yet, node not ready: seen for a
    moment after the broker resumes) are retried for ``retry_for_s``; others raise at once.
    """
    from aiokafka.errors import KafkaError

    deadline = asyncio.get_running_loop().time() + retry_for_s
    while True:
        try:
            await _create_missing(settings)
            return
        except KafkaError as exc:
            if not exc.retriable or asyncio.get_running_loop().time() >= deadline:
                raise
            log.info("creating topics: %r; retrying", exc)
            await asyncio.sleep(0.5)


async def _create_missing(settings: Settings) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers, **settings.kafka.security.aiokafka_kwargs()
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        labels = [settings.topics.labels] if settings.kafka.reads_labels else []
        wanted = [settings.topics.images, *labels, settings.topics.predictions, settings.topics.dlq]
        missing = [NewTopic(name, settings.kafka.partitions, 1) for name in wanted if name not in existing]
        if missing:
            await admin.create_topics(missing)
            await wait_until_visible(admin, [topic.name for topic in missing])
    finally:
        await admin.close()


def ensure_topics_sync(settings: Settings) -> None:
    asyncio.run(ensure_topics(settings))
