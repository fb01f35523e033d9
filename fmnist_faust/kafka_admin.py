"""Create the contract's Kafka topics with the configured partition count."""

from __future__ import annotations

import asyncio
import logging

from .config import Settings

log = logging.getLogger(__name__)
RETRY_FOR_S = 30.0  # a broker that just came back (restart, long pause) answers within this


async def ensure_topics(settings: Settings, retry_for_s: float = RETRY_FOR_S) -> None:
    """Idempotently create ``images``, ``predictions`` and ``images-dlq``.

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
        wanted = [settings.topics.images, settings.topics.predictions, settings.topics.dlq]
        missing = [NewTopic(name, settings.kafka.partitions, 1) for name in wanted if name not in existing]
        if missing:
            await admin.create_topics(missing)
    finally:
        await admin.close()


def ensure_topics_sync(settings: Settings) -> None:
    asyncio.run(ensure_topics(settings))
