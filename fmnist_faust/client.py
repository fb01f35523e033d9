"""A small backend-agnostic client API, compatible with the old demo's ``MainManager``.

    manager = MainManager("kafka")            # or "pubsub"
    producer = manager.create_producer("images")
    producer.produce(value, key="img-1")      # returns a future; blocks while 10,000 are unconfirmed
    producer.produce_batch(ids, pixels, labels)  # N images in one batch record (opt-in)
    producer.close()                          # flushes, raises if any message was not delivered
    consumer = manager.create_consumer("predictions", callback, "prediction-receiver")
    ...; consumer.stop()

Fixed from the demo: the Kafka consumer runs in a real background thread; keys are
bytes on Kafka and the ``key`` attribute on Pub/Sub (never ``ordering_key``); there is
no flush per message; failed sends are reported, not dropped; ``stop()`` is clean. And
the producers never drop under load: bounded in flight, retriable errors retried, exact
counts of what was delivered (:class:`Producer`).
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


# Messages a producer has sent and not yet seen confirmed: ``produce`` waits for room
# beyond this (backpressure) instead of queueing without bound, where sends expired in the
# client's buffer when the broker was busy.
MAX_IN_FLIGHT = 10_000
# Sends of one message in all when the broker answers with a retriable error (or none in
# time): retried after 0.5, 1, 2, 4 s. The consumers' duplicate rule makes a retried
# message that did arrive the first time count once.
SEND_ATTEMPTS = 5
_PRODUCE_CHUNK = 1000  # messages admitted to the window at a time by produce_many


def _retry_pause_s(attempt: int) -> float:
    return min(0.5 * 2 ** (attempt - 1), 4.0)


class _Window:
    """At most ``limit`` messages in flight: :meth:`acquire` blocks until there is room."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self.peak = 0
        self._room = threading.Condition()

    def acquire(self, count: int) -> None:
        with self._room:
            while self.in_flight and self.in_flight + count > self.limit:  # a chunk alone always fits
                self._room.wait()
            self.in_flight += count
            self.peak = max(self.peak, self.in_flight)

    def release(self) -> None:
        with self._room:
            self.in_flight -= 1
            self._room.notify_all()


@dataclass
class _Outgoing:
    """One message until it is confirmed or given up on; ``result`` is what ``produce`` returned."""

    value: bytes
    key: str | None
    attributes: Mapping[str, str] | None
    result: concurrent.futures.Future
    attempt: int = 1


class Producer:
    """Common producer interface: ``produce``, ``produce_many``, ``flush``, ``close``.

    Never drops a message silently: at most ``max_in_flight`` are unconfirmed (``produce``
    blocks for room), retriable errors are retried up to :data:`SEND_ATTEMPTS` sends, and
    :attr:`delivered` / :attr:`failed` count exactly what was confirmed and what was given up
    on; ``flush`` and ``close`` raise :class:`DeliveryError` if anything was not delivered.
    """

    def __init__(self, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self._window = _Window(max_in_flight)
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future] = set()
        self.delivered = 0
        self.retried = 0
        self.errors: list[BaseException] = []

    @property
    def failed(self) -> int:
        return len(self.errors)

    @property
    def peak_in_flight(self) -> int:
        return self._window.peak

    def produce(
        self,
        value: bytes | str | Mapping[str, Any],
        key: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> concurrent.futures.Future:
        """Send one message; the future completes once it is confirmed (or given up on)."""
        return self._admit([(_to_bytes(value), key, attributes)])[0]

    def produce_many(self, items: Iterable[tuple[bytes, str | None]]) -> list[concurrent.futures.Future]:
        """One future per message, in order, on every backend."""
        results: list[concurrent.futures.Future] = []
        chunk: list[tuple[bytes, str | None, Mapping[str, str] | None]] = []
        size = min(_PRODUCE_CHUNK, self._window.limit)
        for value, key in items:
            chunk.append((_to_bytes(value), key, None))
            if len(chunk) == size:
                results += self._admit(chunk)
                chunk = []
        return results + (self._admit(chunk) if chunk else [])

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

    def _admit(
        self, messages: list[tuple[bytes, str | None, Mapping[str, str] | None]]
    ) -> list[concurrent.futures.Future]:
        self._window.acquire(len(messages))
        outgoing = [
            _Outgoing(value, key, attrs, self._track(concurrent.futures.Future())) for value, key, attrs in messages
        ]
        self._send(outgoing)
        return [message.result for message in outgoing]

    def _track(self, result: concurrent.futures.Future) -> concurrent.futures.Future:
        with self._lock:
            self._pending.add(result)

        def done(future: concurrent.futures.Future) -> None:
            error = None if future.cancelled() else future.exception()
            with self._lock:
                self._pending.discard(future)
                if error is None:
                    self.delivered += 1
                else:
                    self.errors.append(error)
            self._window.release()

        result.add_done_callback(done)
        return result

    def _settle(
        self, message: _Outgoing, error: BaseException | None, value: Any, retry: Callable[[_Outgoing], None]
    ) -> None:
        """The outcome of one send: confirmed (``value``: the record's metadata, the message
        id), retried (``retry`` after a pause), or given up on."""
        if error is None:
            message.result.set_result(value)
        elif self._retriable(error) and message.attempt < SEND_ATTEMPTS:
            pause = _retry_pause_s(message.attempt)
            with self._lock:
                self.retried += 1
            if self.retried == 1 or self.retried % 1000 == 0:
                log.warning("a send failed (%r); retrying in %.1f s (%d retries so far)", error, pause, self.retried)
            message.attempt += 1
            timer = threading.Timer(pause, retry, (message,))
            timer.daemon = True
            timer.start()
        else:
            message.result.set_exception(error)

    def _send(self, messages: list[_Outgoing]) -> None:
        raise NotImplementedError

    def _retriable(self, error: BaseException) -> bool:
        raise NotImplementedError

    def flush(self, timeout: float = 120.0) -> None:
        """Wait for every message sent so far; :class:`DeliveryError` if any was not delivered."""
        with self._lock:
            pending = list(self._pending)
        _, unconfirmed = concurrent.futures.wait(pending, timeout=timeout)
        if self.errors or unconfirmed:
            raise DeliveryError(
                f"{self.failed + len(unconfirmed)} message(s) not delivered ({self.delivered} delivered, "
                f"{self.failed} failed, {len(unconfirmed)} unconfirmed after {timeout:.0f} s, "
                f"{self.retried} retries); first error: {self.errors[0] if self.errors else None!r}"
            )

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class KafkaProducer(Producer):
    """aiokafka producer (idempotent, acks=all) driven from a background loop.

    ``request_timeout_s``: how long a batch may wait for the broker before the send fails
    (and is retried)."""

    def __init__(
        self, settings: Settings, topic: str, max_in_flight: int = MAX_IN_FLIGHT, request_timeout_s: float = 40.0
    ) -> None:
        from aiokafka import AIOKafkaProducer

        super().__init__(max_in_flight)
        self.topic = topic
        self._loop = _LoopThread(f"kafka-producer-{topic}")

        async def start() -> Any:
            producer = AIOKafkaProducer(
                bootstrap_servers=settings.kafka.bootstrap_servers,
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                max_batch_size=256 * 1024,
                max_request_size=4 * 1024 * 1024,
                request_timeout_ms=int(request_timeout_s * 1000),
                **settings.kafka.security.aiokafka_kwargs(),
            )
            await producer.start()
            return producer

        self._producer = self._loop.run(start(), timeout=60)

    def _retriable(self, error: BaseException) -> bool:
        """Errors a later send may not meet: a broker that did not answer in time (a batch
        expired in the buffer: it never left), a leader moving, a connection lost."""
        from aiokafka.errors import KafkaError, KafkaTimeoutError

        return isinstance(error, KafkaTimeoutError) or (isinstance(error, KafkaError) and error.retriable)

    def _send(self, messages: list[_Outgoing]) -> None:
        self._loop.submit(self._send_all(messages))

    def _retry(self, message: _Outgoing) -> None:
        self._loop.submit(self._send_all([message]))

    async def _send_all(self, messages: list[_Outgoing]) -> None:
        """Queue each message in the producer; each settles when the broker answers."""
        for message in messages:
            headers = [(k, v.encode()) for k, v in message.attributes.items()] if message.attributes else None
            key = message.key.encode("utf-8") if message.key is not None else None
            try:
                delivery = await self._producer.send(self.topic, value=message.value, key=key, headers=headers)
            except Exception as exc:  # e.g. too large (given up on), or no room in time (retried)
                self._settle(message, exc, None, self._retry)
                continue
            delivery.add_done_callback(lambda d, m=message: self._settle(m, *_outcome(d), self._retry))

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._loop.run(self._producer.stop(), timeout=30)
            self._loop.close()


def _outcome(future: asyncio.Future | concurrent.futures.Future) -> tuple[BaseException | None, Any]:
    """(error, result) of a finished send future, asyncio's or concurrent's."""
    if future.cancelled():
        return concurrent.futures.CancelledError(), None
    error = future.exception()
    return error, None if error is not None else future.result()


class PubSubProducer(Producer):
    """Publisher with batching; the key goes in the ``key`` attribute."""

    def __init__(self, settings: Settings, topic: str, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        from google.cloud import pubsub_v1

        super().__init__(max_in_flight)
        self._client = pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(
                max_messages=1000, max_bytes=8 * 1024 * 1024, max_latency=0.01
            ),
            **settings.pubsub.client_kwargs(),
        )
        self.topic_path = self._client.topic_path(settings.pubsub.project, topic)

    def _retriable(self, error: BaseException) -> bool:
        """Errors the service may not answer with next time (the library has retried them
        within its own deadline already)."""
        from google.api_core import exceptions as gexc

        return isinstance(
            error,
            (
                gexc.ServiceUnavailable,
                gexc.DeadlineExceeded,
                gexc.InternalServerError,
                gexc.Aborted,
                gexc.ResourceExhausted,
                gexc.Unknown,
                concurrent.futures.TimeoutError,
            ),
        )

    def _send(self, messages: list[_Outgoing]) -> None:
        for message in messages:
            self._publish(message)

    def _publish(self, message: _Outgoing) -> None:
        attrs = dict(message.attributes or {})
        if message.key is not None:
            attrs["key"] = message.key
        future = self._client.publish(self.topic_path, message.value, **attrs)
        future.add_done_callback(lambda f: self._settle(message, *_outcome(f), self._publish))

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
