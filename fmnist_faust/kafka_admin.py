"""Create the contract's Kafka topics with the configured partition count."""

from __future__ import annotations

import asyncio

from .config import Settings


async def ensure_topics(settings: Settings) -> None:
    """Idempotently create ``images``, ``predictions`` and ``images-dlq``."""
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
