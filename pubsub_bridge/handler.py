"""One batch of Pub/Sub messages: classify once, publish, count durably, then ack.

The order is what makes the totals exact: predictions and dead letters are published and
confirmed, then the batch is counted in the store (one transaction), and only then are
the messages acked. A crash anywhere before the commit redelivers messages that were not
counted; a crash after it redelivers messages the store already holds, which are acked
without being counted or published again, as is a new message re-using a counted image id
(the duplicate rule of :mod:`fmnist_faust.core.pipeline`). So the scores count every image exactly once,
and ``predictions`` carries each image at least once: exactly once, unless a batch is
handled again after it was published but before it was committed (the bridge died, or the
commit or one of the batch's publishes failed and the batch was retried).

:class:`LabelHandler` does the same for the labels subscription: malformed labels are
dead-lettered (attribute ``stream: labels``) and confirmed, then the batch's labels are
counted in one store transaction (:meth:`~.store.Store.commit_labels`: joined, waiting,
repeated, late), then acked; a redelivered label message is acked without being counted.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from google.api_core import exceptions as gexc
from prometheus_client import Counter, Histogram

from fmnist_faust import metrics
from fmnist_faust.core.contract import (
    DEFAULT_MAX_BATCH_IMAGES,
    DEFAULT_MAX_MESSAGE_BYTES,
    InvalidMessage,
    Prediction,
    dead_letter_attributes,
    decode_label,
)
from fmnist_faust.core.labels import Label
from fmnist_faust.core.model import Classifier
from fmnist_faust.core.pipeline import BatchResult, ModelFailure, RawMessage, classify_isolating, repeats
from fmnist_faust.core.recent import RecentMistakes
from fmnist_faust.core.rollout import ModelSwitch, shadow_predict

from .store import Store, image_key, label_key, message_key

log = logging.getLogger(__name__)

ACKED = Counter("fmnist_bridge_acked_total", "Messages acked after being handled")
NACKED = Counter("fmnist_bridge_nacked_total", "Messages nacked because handling them failed")
COMMIT_SECONDS = Histogram(
    "fmnist_bridge_commit_seconds",
    "Time of one batch's commit to the state store (ids + totals, one transaction)",
    buckets=(0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5),
)
# Publish errors that retrying the same message cannot fix; anything else (unavailable,
# deadline, missing topic, permissions) is an outage the bridge waits out.
PERMANENT_PUBLISH_ERRORS = (gexc.InvalidArgument, gexc.FailedPrecondition, gexc.OutOfRange)


class Delivery(Protocol):
    """The parts of a received ``google.cloud.pubsub_v1.subscriber.message.Message`` we use."""

    data: bytes
    attributes: Mapping[str, str]
    message_id: str
    ack_id: str
    publish_time: datetime
    delivery_attempt: int | None

    def ack(self) -> None: ...

    def nack(self) -> None: ...


class Publisher(Protocol):
    """What the handler publishes with (:class:`~.clients.BulkPublisher` in the bridge)."""

    def publish(self, topic: str, data: bytes, **attrs: str) -> concurrent.futures.Future: ...

    def publish_many(
        self, topic: str, messages: Sequence[tuple[bytes, Mapping[str, str]]]
    ) -> list[concurrent.futures.Future]: ...


class Acker(Protocol):
    def ack(self, deliveries: Sequence[Delivery]) -> None: ...

    def nack(self, deliveries: Sequence[Delivery]) -> None: ...


class TransientError(RuntimeError):
    """Publishing or committing failed in a way that retrying the same batch may fix."""


def transport_key(attributes: Mapping[str, str]) -> str | None:
    """The image id the publisher put in the attributes: ``key`` (our producer) or ``id``."""
    return attributes.get("key") or attributes.get("id") or None


class BatchHandler:
    """Runs on the bridge's single batching thread; see the module docstring for the order."""

    def __init__(
        self,
        classifier: Classifier | ModelSwitch,
        store: Store,
        publisher: Publisher,
        acker: Acker,
        max_message_bytes: int,
        window_seconds: int,
        predictions_topic: str,
        dlq_topic: str,
        recent: RecentMistakes,
        publish_timeout_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_batch_images: int = DEFAULT_MAX_BATCH_IMAGES,
    ) -> None:
        # Each batch is classified by the models of one snapshot of the switch (see core.rollout).
        self.models = classifier if isinstance(classifier, ModelSwitch) else ModelSwitch.fixed(classifier)
        self.store = store
        self.publisher = publisher
        self.acker = acker
        self.max_message_bytes = max_message_bytes
        self.window_seconds = window_seconds
        self.predictions_topic = predictions_topic
        self.dlq_topic = dlq_topic
        self.recent = recent
        self.publish_timeout_s = publish_timeout_s
        self.clock = clock
        self.max_batch_images = max_batch_images
        # Set at shutdown: publish waits end by then, so stopping never hangs on an outage.
        self.deadline: float | None = None

    def handle(self, batch: Sequence[Delivery]) -> None:
        """Handle ``batch``; raise :class:`TransientError` for the caller to retry it.

        A message the model fails on is dead-lettered as ``processing_failed`` by the core
        (``classify_isolating``). Any other failure (a publish Pub/Sub refuses, a bug
        outside classification) is narrowed down by handling each message alone; the ones that still fail are
        nacked, and the subscription's dead-letter policy stops their redelivery after
        ``PUBSUB_MAX_DELIVERY_ATTEMPTS``.
        """
        try:
            self._handle(batch)
        except TransientError:
            raise
        except Exception:
            if len(batch) > 1:
                log.exception("a batch of %d messages failed; handling them one by one", len(batch))
                for delivery in batch:
                    self.handle([delivery])
                return
            delivery = batch[0]
            log.exception(
                "nacking message %s (delivery attempt %s): handling it failed",
                delivery.message_id,
                delivery.delivery_attempt,
            )
            self.acker.nack(batch)
            NACKED.inc()

    def _handle(self, batch: Sequence[Delivery]) -> None:
        messages = [
            RawMessage(value=d.data, key=transport_key(d.attributes), timestamp=d.publish_time.timestamp())
            for d in batch
        ]
        models = self.models.current()
        try:
            with metrics.PREDICT_SECONDS.time():
                result = classify_isolating(
                    models.live, messages, self.max_message_bytes, max_images=self.max_batch_images
                )
                shadow = shadow_predict(models.shadow, result)
        except ModelFailure as exc:  # the model, not a message: hold the batch, never dead-letter it
            raise TransientError(str(exc)) from exc
        carriers = [batch[source] for source in result.sources]  # the delivery of each image
        keys = [
            image_key(outcome.id)
            if isinstance(outcome, Prediction)
            else message_key(delivery.message_id, outcome.index)
            for delivery, outcome in zip(carriers, result.outcomes)
        ]
        try:
            counted_before = self.store.seen(keys)
        except self.store.transient_errors as exc:  # unreachable, restarting, locked: retry the batch
            raise self._unavailable(exc) from exc
        repeated = repeats(keys, lambda _index, key: key in counted_before)
        new = result.without(repeated)
        if new.outcomes:
            fresh = [i for i in range(len(keys)) if i not in repeated]
            self._publish([carriers[i] for i in fresh], new)
            try:
                with COMMIT_SECONDS.time():
                    self.store.commit(
                        new,
                        [keys[i] for i in fresh],
                        models.live.version,
                        self.window_seconds,
                        shadow.subset(lambda i: i not in repeated) if shadow else None,
                    )
            except self.store.transient_errors as exc:  # locked, disk full, I/O error, connection lost: retry
                raise self._unavailable(exc) from exc
            self.recent.add_batch(new)
        metrics.observe_batch(new, len(repeated))
        if repeated:
            log.debug("acking %d messages counted before", len(repeated))
        self.acker.ack(batch)
        ACKED.inc(len(batch))

    def _unavailable(self, exc: BaseException) -> TransientError:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        return TransientError(f"the state store {self.store.location} is unavailable ({detail})")

    def _publish(self, deliveries: Sequence[Delivery], result: BatchResult) -> None:
        """One prediction per image (attribute ``id``), each invalid message to the DLQ with
        its original bytes and attributes plus ``error_kind`` and ``error`` (an invalid image
        of a batch record: that image alone, plus ``batch_index``); wait for every publish to
        be confirmed. ``deliveries[i]`` carried outcome ``i``."""
        futures: list[concurrent.futures.Future] = []
        predictions: list[tuple[bytes, Mapping[str, str]]] = []
        for delivery, outcome in zip(deliveries, result.outcomes):
            if isinstance(outcome, InvalidMessage):
                log.warning("dead-lettering message %s: %s", delivery.message_id, outcome)
                attributes: dict[str, Any] = dict(delivery.attributes, **dead_letter_attributes(outcome))
                data = outcome.dead_letter_value(delivery.data) or b""
                futures.append(self.publisher.publish(self.dlq_topic, data, **attributes))
            else:
                predictions.append((outcome.encode(), {"id": outcome.id}))
        futures += self.publisher.publish_many(self.predictions_topic, predictions)
        confirm(futures, self.publish_timeout_s, self.deadline, self.clock)


def confirm(
    futures: Sequence[concurrent.futures.Future],
    timeout: float,
    deadline: float | None,
    clock: Callable[[], float],
) -> None:
    """Wait for every publish, at most ``timeout`` s (less when ``deadline`` comes first);
    :class:`TransientError` if one is unconfirmed or failed, a permanent error raised as is."""
    if deadline is not None:
        timeout = max(0.1, min(timeout, deadline - clock()))
    done, pending = concurrent.futures.wait(futures, timeout=timeout)
    if pending:
        raise TransientError(f"{len(pending)} of {len(futures)} publishes not confirmed within {timeout:.1f} s")
    errors = [f.exception() for f in done if f.exception() is not None]
    if not errors:
        return
    permanent = [e for e in errors if isinstance(e, PERMANENT_PUBLISH_ERRORS)]
    if permanent:
        raise permanent[0]
    raise TransientError(f"{len(errors)} of {len(futures)} publishes failed; first: {errors[0]!r}")


class LabelHandler:
    """One batch of the labels subscription: dead-letter the malformed, count the rest, ack.

    The same order as :class:`BatchHandler`, on the bridge's second batching thread: the
    dead letters are confirmed, then the batch is counted in one transaction, then acked.
    A failure of the whole batch is retried by the caller (:class:`TransientError`); a
    failure of one message is narrowed down and nacked, as for images."""

    def __init__(
        self,
        store: Store,
        publisher: Publisher,
        acker: Acker,
        window_seconds: int,
        dlq_topic: str,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        publish_timeout_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.acker = acker
        self.window_seconds = window_seconds
        self.dlq_topic = dlq_topic
        self.max_message_bytes = max_message_bytes
        self.publish_timeout_s = publish_timeout_s
        self.clock = clock
        self.deadline: float | None = None  # set at shutdown, as BatchHandler's

    def handle(self, batch: Sequence[Delivery]) -> None:
        try:
            self._handle(batch)
        except TransientError:
            raise
        except Exception:
            if len(batch) > 1:
                log.exception("a batch of %d labels failed; handling them one by one", len(batch))
                for delivery in batch:
                    self.handle([delivery])
                return
            log.exception("nacking label message %s: handling it failed", batch[0].message_id)
            self.acker.nack(batch)
            NACKED.inc()

    def _handle(self, batch: Sequence[Delivery]) -> None:
        labels: list[Label] = []
        keys: list[str] = []
        rejected: list[tuple[Delivery, InvalidMessage]] = []
        for delivery in batch:
            try:
                decoded = decode_label(delivery.data, transport_key(delivery.attributes), self.max_message_bytes)
            except InvalidMessage as error:
                rejected.append((delivery, error))
                continue
            if decoded is not None:  # a tick: the bridge keeps time by its clock, nothing to count
                labels.append(Label(decoded.id, decoded.label, delivery.publish_time.timestamp()))
                keys.append(label_key(delivery.message_id))
        try:
            counted_before = self.store.seen([*keys, *(label_key(d.message_id) for d, _ in rejected)])
        except self.store.transient_errors as exc:
            raise TransientError(f"the state store {self.store.location} is unavailable ({exc})") from exc
        fresh_rejected = [(d, e) for d, e in rejected if label_key(d.message_id) not in counted_before]
        if fresh_rejected:
            log.warning("dead-lettering %d label message(s), first: %s", len(fresh_rejected), fresh_rejected[0][1])
            confirm(
                [
                    self.publisher.publish(
                        self.dlq_topic, d.data or b"", **dict(d.attributes, **dead_letter_attributes(e, "labels"))
                    )
                    for d, e in fresh_rejected
                ],
                self.publish_timeout_s,
                self.deadline,
                self.clock,
            )
        if labels or fresh_rejected:
            try:
                with COMMIT_SECONDS.time():
                    self.store.commit_labels(
                        labels,
                        keys,
                        [(label_key(d.message_id), e.kind) for d, e in fresh_rejected],
                        self.window_seconds,
                    )
            except self.store.transient_errors as exc:
                raise TransientError(f"the state store {self.store.location} is unavailable ({exc})") from exc
        self.acker.ack(batch)
        ACKED.inc(len(batch))
