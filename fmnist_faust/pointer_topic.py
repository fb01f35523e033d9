"""The rollout pointer on Kafka: one compacted, one-partition topic per app (``<app id>-model-pointer``).

Each record is key ``rollout`` and a :class:`~.core.registry.RolloutState` as JSON (live
and shadow version + SHA-256, never model bytes); compaction keeps the last, which is the
state. ``fmnist-model`` writes it with the broker's own credentials (the ``KAFKA_*``
settings, SASL/TLS included) and waits for every in-sync replica; the workers read it
(:class:`PointerReader`). No Faust here: the CLI imports this module too.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .config import Settings
from .core.registry import RolloutState
from .kafka_admin import wait_until_visible

log = logging.getLogger(__name__)
KEY = b"rollout"
TOPIC_CONFIG = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1", "segment.ms": "3600000"}


async def ensure_pointer_topic(settings: Settings) -> None:
    """Create the compacted pointer topic if it is missing (idempotent)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_servers, **settings.kafka.security.aiokafka_kwargs()
    )
    await admin.start()
    try:
        if settings.kafka.pointer_topic not in set(await admin.list_topics()):
            try:
                await admin.create_topics([NewTopic(settings.kafka.pointer_topic, 1, 1, topic_configs=TOPIC_CONFIG)])
            except TopicAlreadyExistsError:  # another worker or the CLI was first
                pass
            await wait_until_visible(admin, [settings.kafka.pointer_topic])
    finally:
        await admin.close()


class PointerReader:
    """Follows the pointer topic: :meth:`read_to_end` at start, :meth:`poll` afterwards."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = RolloutState()
        self._consumer: Any = None

    async def _start(self) -> Any:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self.settings.kafka.security.aiokafka_kwargs(),
        )
        await consumer.start()
        tp = TopicPartition(self.settings.kafka.pointer_topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        return consumer

    async def read_to_end(self, timeout: float = 30.0) -> RolloutState:
        """The newest state in the topic (read from the start to the end offset as of now)."""
        from aiokafka import TopicPartition

        if self._consumer is None:
            self._consumer = await self._start()
        tp = TopicPartition(self.settings.kafka.pointer_topic, 0)
        end = (await self._consumer.end_offsets([tp]))[tp]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await self._consumer.position(tp) < end:
            if loop.time() > deadline:
                raise TimeoutError(f"could not read {self.settings.kafka.pointer_topic} to offset {end}")
            self._take(await self._consumer.getmany(tp, timeout_ms=200))
        return self.state

    async def poll(self) -> RolloutState:
        """Take whatever arrived since the last call (waits at most 100 ms)."""
        if self._consumer is None:
            return await self.read_to_end()
        self._take(await self._consumer.getmany(timeout_ms=100))
        return self.state

    def _take(self, batches: dict[Any, list[Any]]) -> None:
        for records in batches.values():
            for record in records:
                if record.key != KEY:
                    continue
                try:
                    self.state = RolloutState.from_json(record.value)
                except ValueError as exc:  # not written by fmnist-model: keep the last good state
                    log.error("ignoring record %d of the pointer topic: %s", record.offset, exc)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


async def write_state(settings: Settings, state: RolloutState) -> None:
    """Publish ``state`` and wait until every in-sync replica has it."""
    from aiokafka import AIOKafkaProducer

    await ensure_pointer_topic(settings)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        **settings.kafka.security.aiokafka_kwargs(),
    )
    await producer.start()
    try:
        await producer.send_and_wait(settings.kafka.pointer_topic, state.to_json().encode("utf-8"), key=KEY)
    finally:
        await producer.stop()


async def read_state(settings: Settings, timeout: float = 30.0) -> RolloutState:
    """The current state (the empty one, i.e. the default model, if none was ever written)."""
    await ensure_pointer_topic(settings)
    reader = PointerReader(settings)
    try:
        return await reader.read_to_end(timeout)
    finally:
        await reader.stop()
