"""A small backend-agnostic client API, compatible with the old demo's ``MainManager``.

    manager = MainManager("kafka")            # or "pubsub"
    producer = manager.create_producer("images")
    producer.produce(value, key="img-1")      # returns a future; errors surface there
    producer.produce_batch(ids, pixels, labels)  # N images in one batch record (opt-in)
    producer.close()                          # flushes, raises if any send failed
    consumer = manager.create_consumer("predictions", callback, "prediction-receiver")
    ...; consumer.stop()

Fixed from the demo: the Kafka consumer runs in a real background thread; keys are
bytes on Kafka and the ``key`` attribute on Pub/Sub (never ``ordering_key``); there is
no flush per message; failed sends are reported, not dropped; ``stop()`` is clean.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import Settings, load_settings

log = logging.getLogger(__name__)

BACKENDS = ("kafka", "pubsub")


class DeliveryError(RuntimeError):
    """Some sends were not delivered (raised by ``flush``/``close``)."""


@dataclass(frozen=True)
class Message:
    """What a consumer callback receives, whatever the backend."""

    value: bytes
    key: str | None
    attributes: Mapping[str, str] = field(default_factory=dict)


def _to_bytes(value: bytes | str | Mapping[str, Any]) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


class _LoopThread:
    """An asyncio loop in a daemon thread, for driving aiokafka from sync code."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Any) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class Producer:
    """Common producer interface: ``produce``, ``produce_many``, ``flush``, ``close``."""

    def produce(
        self,
        value: bytes | str | Mapping[str, Any],
        key: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> concurrent.futures.Future:
        raise NotImplementedError

    def produce_many(self, items: Iterable[tuple[bytes, str | None]]) -> list[concurrent.futures.Future]:
        """One future per message, in order, on every backend."""
        return [self.produce(value, key) for value, key in items]

    def produce_batch(
        self,
        ids: Sequence[str],
        pixels: Any,
        labels: Sequence[int | None] | None = None,
        sent_at: float | None = None,
        key: str | None = None,
    ) -> concurrent.futures.Future:
        """Send N images as one batch record (``pixels``: N x 784 uint8, an array or bytes).

        ``key`` defaults to the first id. On Kafka it picks the record's partition, which is
        where its images' ids are deduplicated: a record re-sent whole lands there again.
        """
        from .core.contract import encode_batch

        return self.produce(encode_batch(ids, pixels, labels, sent_at), key=ids[0] if key is None else key)

    def flush(self, timeout: float = 60.0) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class KafkaProducer(Producer):
    """aiokafka producer (idempotent, acks=all) driven from a background loop."""

    def __init__(self, settings: Settings, topic: str) -> None:
        from aiokafka import AIOKafkaProducer

        self.topic = topic
        self._loop = _LoopThread(f"kafka-producer-{topic}")
        self._pending: set[concurrent.futures.Future] = set()
        self._errors: list[BaseException] = []

        async def start() -> Any:
            producer = AIOKafkaProducer(
                bootstrap_servers=settings.kafka.bootstrap_servers,
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                max_batch_size=256 * 1024,
                max_request_size=4 * 1024 * 1024,
                **settings.kafka.security.aiokafka_kwargs(),
            )
            await producer.start()
            return producer

        self._producer = self._loop.run(start(), timeout=60)

    async def _send_all(
        self,
        items: list[tuple[bytes, bytes | None, list[tuple[str, bytes]] | None]],
        results: list[concurrent.futures.Future],
    ) -> None:
        """Queue every message in the producer; each result future follows its message's delivery."""

        def follow(delivery: asyncio.Future, result: concurrent.futures.Future) -> None:
            if delivery.cancelled():
                result.cancel()
            elif delivery.exception() is not None:
                result.set_exception(delivery.exception())
            else:
                result.set_result(delivery.result())

        for index, (value, key, headers) in enumerate(items):
            try:
                delivery = await self._producer.send(self.topic, value=value, key=key, headers=headers)
            except Exception as exc:  # e.g. message too large: this and the unsent ones fail
                for result in results[index:]:
                    result.set_exception(exc)
                return
            delivery.add_done_callback(lambda d, r=results[index]: follow(d, r))

    def _track(self, future: concurrent.futures.Future) -> concurrent.futures.Future:
        self._pending.add(future)

        def done(f: concurrent.futures.Future) -> None:
            self._pending.discard(f)
            error = None if f.cancelled() else f.exception()
            if error is not None:
                self._errors.append(error)

        future.add_done_callback(done)
        return future

    def produce(
        self,
        value: bytes | str | Mapping[str, Any],
        key: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> concurrent.futures.Future:
        headers = [(k, v.encode()) for k, v in attributes.items()] if attributes else None
        return self._send([(_to_bytes(value), key.encode("utf-8") if key is not None else None, headers)])[0]

    def produce_many(self, items: Iterable[tuple[bytes, str | None]]) -> list[concurrent.futures.Future]:
        """Send many messages with one cross-thread hop (much faster than produce in a loop)."""
        return self._send([(_to_bytes(v), k.encode("utf-8") if k is not None else None, None) for v, k in items])

    def _send(
        self, batch: list[tuple[bytes, bytes | None, list[tuple[str, bytes]] | None]]
    ) -> list[concurrent.futures.Future]:
        results = [self._track(concurrent.futures.Future()) for _ in batch]
        self._loop.submit(self._send_all(batch, results))
        return results

    def flush(self, timeout: float = 60.0) -> None:
        _, pending = concurrent.futures.wait(list(self._pending), timeout=timeout)
        if self._errors:
            raise DeliveryError(f"{len(self._errors)} Kafka send(s) failed; first: {self._errors[0]!r}")
        if pending:
            raise DeliveryError(f"{len(pending)} Kafka send(s) still unconfirmed after {timeout} s")

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._loop.run(self._producer.stop(), timeout=30)
            self._loop.close()


class PubSubProducer(Producer):
    """Publisher with batching; the key goes in the ``key`` attribute."""

    def __init__(self, settings: Settings, topic: str) -> None:
        from google.cloud import pubsub_v1

        self._client = pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(
                max_messages=1000, max_bytes=8 * 1024 * 1024, max_latency=0.01
            ),
            **settings.pubsub.client_kwargs(),
        )
        self.topic_path = self._client.topic_path(settings.pubsub.project, topic)
        self._pending: set[concurrent.futures.Future] = set()
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()

    def produce(
        self,
        value: bytes | str | Mapping[str, Any],
        key: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> concurrent.futures.Future:
        attrs = dict(attributes or {})
        if key is not None:
            attrs["key"] = key
        future = self._client.publish(self.topic_path, _to_bytes(value), **attrs)
        with self._lock:
            self._pending.add(future)

        def done(f: concurrent.futures.Future) -> None:
            error = None if f.cancelled() else f.exception()
            with self._lock:
                self._pending.discard(f)
                if error is not None:
                    self._errors.append(error)

        future.add_done_callback(done)
        return future

    def flush(self, timeout: float = 60.0) -> None:
        with self._lock:
            pending = list(self._pending)
        _, unconfirmed = concurrent.futures.wait(pending, timeout=timeout)
        if self._errors:
            raise DeliveryError(f"{len(self._errors)} Pub/Sub publish(es) failed; first: {self._errors[0]!r}")
        if unconfirmed:
            raise DeliveryError(f"{len(unconfirmed)} Pub/Sub publish(es) still unconfirmed after {timeout} s")

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._client.stop()


class Consumer:
    """A running consumer; ``stop()`` ends it and waits for the thread."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class KafkaConsumer(Consumer):
    """aiokafka consumer in a background thread calling ``callback(Message)`` per record."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        callback: Callable[[Message], None],
        group_id: str | None,
        from_beginning: bool,
    ) -> None:
        from aiokafka import AIOKafkaConsumer

        self._loop = _LoopThread(f"kafka-consumer-{topic}")
        self._stopping = asyncio.Event()
        self.error: BaseException | None = None

        async def start() -> Any:
            consumer = AIOKafkaConsumer(
                topic,
                bootstrap_servers=settings.kafka.bootstrap_servers,
                group_id=group_id,
                auto_offset_reset="earliest" if from_beginning else "latest",
                enable_auto_commit=True,
                **settings.kafka.security.aiokafka_kwargs(),
            )
            try:
                await consumer.start()
            except BaseException:
                await consumer.stop()
                raise
            return consumer

        async def run(consumer: Any) -> None:
            try:
                while not self._stopping.is_set():
                    batches = await consumer.getmany(timeout_ms=200, max_records=1000)
                    for records in batches.values():
                        for record in records:
                            key = record.key.decode("utf-8", "replace") if record.key is not None else None
                            headers = {k: v.decode("utf-8", "replace") for k, v in record.headers or ()}
                            callback(Message(value=record.value or b"", key=key, attributes=headers))
            except BaseException as exc:  # surfaced to the owner through .error
                self.error = exc
                log.exception("Kafka consumer on %s stopped", topic)
            finally:
                await consumer.stop()

        try:  # the broker's own error (unreachable, bad SASL...) reaches the caller at once
            consumer = self._loop.run(start(), timeout=60)
        except BaseException:
            self._loop.close()
            raise
        self._task = self._loop.submit(run(consumer))

    def stop(self) -> None:
        self._loop.loop.call_soon_threadsafe(self._stopping.set)
        try:
            self._task.result(timeout=30)
        finally:
            self._loop.close()


class PubSubConsumer(Consumer):
    """Streaming pull with flow control; acks after the callback returns, nacks if it raises."""

    def __init__(
        self, settings: Settings, subscription: str, callback: Callable[[Message], None], max_messages: int = 1000
    ) -> None:
        from google.cloud import pubsub_v1

        self._client = pubsub_v1.SubscriberClient(**settings.pubsub.client_kwargs())
        path = self._client.subscription_path(settings.pubsub.project, subscription)

        def on_message(message: Any) -> None:
            attributes = dict(message.attributes)
            try:
                callback(Message(value=message.data, key=attributes.get("key"), attributes=attributes))
            except Exception:
                log.exception("callback failed; nacking message %s", message.message_id)
                message.nack()
            else:
                message.ack()

        self._future = self._client.subscribe(
            path, on_message, flow_control=pubsub_v1.types.FlowControl(max_messages=max_messages)
        )

    def stop(self) -> None:
        self._future.cancel()
        try:
            self._future.result(timeout=30)
        except concurrent.futures.CancelledError:
            pass
        finally:
            self._client.close()


class MainManager:
    """Entry point kept from the old demo: ``MainManager('kafka' | 'pubsub')``."""

    def __init__(self, backend: str, settings: Settings | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.settings = settings or load_settings()

    def create_producer(self, topic: str) -> Producer:
        if self.backend == "kafka":
            return KafkaProducer(self.settings, topic)
        return PubSubProducer(self.settings, topic)

    def create_consumer(
        self,
        topic: str,
        callback: Callable[[Message], None],
        gcp_subscription_id: str | None = None,
        from_beginning: bool = True,
    ) -> Consumer:
        """Kafka: consume ``topic`` in consumer group ``gcp_subscription_id`` (a fresh one if None).

        Pub/Sub: pull from ``gcp_subscription_id`` (required: subscriptions, not topics,
        are what Pub/Sub consumers read).
        """
        if self.backend == "kafka":
            group = gcp_subscription_id or f"fmnist-consumer-{uuid.uuid4().hex[:8]}"
            return KafkaConsumer(self.settings, topic, callback, group, from_beginning)
        if not gcp_subscription_id:
            raise ValueError("Pub/Sub consumers need gcp_subscription_id (e.g. 'prediction-receiver')")
        return PubSubConsumer(self.settings, gcp_subscription_id, callback)
