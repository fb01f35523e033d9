"""``run``: streaming pulls -> one batching thread -> :class:`~.handler.BatchHandler`.

The bridge opens ``BRIDGE_STREAMS`` streaming pulls on its subscription (the emulator
serves each stream at about 2,000 messages/s, so one stream would bound the bridge). The
client library calls back on many threads, one message at a time; the callbacks only
queue the message. A single batching thread takes up to ``FMNIST_BATCH_SIZE`` messages
(waiting at most ``FMNIST_BATCH_LINGER`` seconds for more; batch records: until about
``STEP_IMAGES`` images) and hands them to the handler,
which makes one predict call per batch. Flow control (``BRIDGE_MAX_MESSAGES`` /
``BRIDGE_MAX_BYTES``, divided between the streams) bounds what is outstanding in total,
so the queue cannot grow without limit. A message is acked or nacked on the stream that
delivered it (the library's message knows its stream).

Stopping (SIGTERM, Ctrl-C): every stream is cancelled first, so nothing new arrives (the
library nacks what it held back), then the messages already queued are handled and acked
with the unary Acknowledge call (the streams' ack paths are gone by then), within
:data:`DRAIN_SECONDS`; whatever is left is neither acked nor counted, and Pub/Sub
redelivers it after its ack deadline. A second signal exits at once: the store is
always consistent, so nothing is lost either way. A stream that ends on its own (an error
the library does not retry) stops the whole bridge the same way.

A :class:`Pruner` thread deletes keys older than ``FMNIST_DEDUPE_SECONDS`` from the
store, a small batch per transaction, so the store stays about one horizon in size.

Health (``/healthz``, ``/readyz``; :class:`BridgeHealth`): a dead batching thread or an
ended stream stops the bridge with exit status 1 within :data:`POLL_SECONDS` plus the
drain (the main loop watches both) and fails liveness meanwhile, as does a batch held
failing for more than :data:`HELD_BATCH_BOUND_S`.

Delayed labels: one more streaming pull, on the labels subscription, feeds a second
batching thread and its :class:`~.handler.LabelHandler`; a :class:`LabelExpirer` thread
counts and removes, every :data:`LABEL_EXPIRY_EVERY_S` at most, the image ids whose wait
(``FMNIST_LABEL_WAIT_SECONDS``) is over, a transaction per batch of them (both in
:mod:`.store`).

Live rollout: the models come from the rollout pointer in the store (read before the
first pull, so a restarted bridge serves the promoted version from its first batch); a
:class:`RolloutFollower` thread reads the pointer every :data:`POINTER_POLL_SECONDS` and
loads what it names off the batching thread; the handler takes one snapshot per batch.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any, Protocol

from google.api_core.exceptions import GoogleAPICallError
from prometheus_client import Counter, Gauge

from fmnist_faust.config import Settings
from fmnist_faust.core.contract import estimated_images
from fmnist_faust.core.health import Check, FailingBatches
from fmnist_faust.core.model import ModelError
from fmnist_faust.core.pipeline import STEP_IMAGES
from fmnist_faust.core.recent import RecentMistakes
from fmnist_faust.core.registry import ModelRegistry
from fmnist_faust.core.rollout import ModelSwitch
from fmnist_faust.core.scores import Scores

from .clients import BulkPublisher, subscriber_client
from .handler import BatchHandler, Delivery, LabelHandler, TransientError
from .store import EXPIRE_BATCH, PRUNE_BATCH, Store, describe_open_error, open_store
from .web import Views, WebServer

log = logging.getLogger(__name__)

DRAIN_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 30.0
_ACK_CHUNK = 1000  # ack ids per unary Acknowledge request (well under its 512 KB limit)
PRUNE_PAUSE_SECONDS = 0.05  # between delete batches: at most PRUNE_BATCH / 0.05 = 40,000 keys/s
POINTER_POLL_SECONDS = 0.5  # one primary-key read of the store per poll
POLL_SECONDS = 0.5  # how often the main loop checks the streams and the batching thread
LABEL_EXPIRY_EVERY_S = 30.0  # at most; a tenth of the wait when that is shorter (at least 1 s)
HELD_BATCH_BOUND_S = 2 * MAX_BACKOFF_SECONDS  # a batch held failing this long fails liveness

PRUNED = Counter("fmnist_bridge_pruned_total", "Counted keys deleted from the store after the dedupe horizon")
EXPIRED = Counter(
    "fmnist_bridge_label_ids_expired_total", "Image ids removed from the label join at the end of their wait"
)
LONGEST_PRUNE = Gauge(
    "fmnist_bridge_longest_prune_seconds", "Longest single delete transaction of the store's pruning so far"
)


class StreamAcker:
    """Acks through the streaming pulls while they are open, with unary calls once they are closed.

    A streamed message acks on its own stream, so messages from several streams need no routing
    here; the switch to unary acks happens for all streams at once, before any is cancelled."""

    def __init__(self, subscriber: Any, subscription: str) -> None:
        self.subscriber = subscriber
        self.subscription = subscription
        self._lock = threading.Lock()
        self._streaming = True

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        with self._lock:
            if self._streaming:
                for delivery in deliveries:
                    delivery.ack()
                return
        ack_ids = [d.ack_id for d in deliveries]
        try:
            for start in range(0, len(ack_ids), _ACK_CHUNK):
                self.subscriber.acknowledge(subscription=self.subscription, ack_ids=ack_ids[start : start + _ACK_CHUNK])
        except GoogleAPICallError as exc:  # harmless: counted already, so a redelivery is skipped
            log.warning(
                "could not ack %d handled messages at shutdown (%s); their redelivery will be skipped",
                len(ack_ids),
                exc,
            )

    def nack(self, deliveries: Sequence[Delivery]) -> None:
        """Nack on the message's stream; once the streams are closed, leave the messages to their ack deadline
        (the emulator drops a unary deadline change for a message leased on a closed stream)."""
        with self._lock:
            if self._streaming:
                for delivery in deliveries:
                    delivery.nack()

    def close_streams(self, futures: Sequence[Any], timeout: float = 30.0) -> BaseException | None:
        """Cancel every streaming pull and wait for each; returns the first error one ended with."""
        with self._lock:
            self._streaming = False
            for future in futures:
                future.cancel()
            error: BaseException | None = None
            deadline = time.monotonic() + timeout
            for future in futures:
                try:
                    future.result(timeout=max(0.0, deadline - time.monotonic()))
                except concurrent.futures.CancelledError:
                    pass
                except Exception as exc:  # the stream's own failure, for the caller to report
                    error = error or exc
            return error


def stream_flow_limits(max_messages: int, max_bytes: int, streams: int) -> list[tuple[int, int]]:
    """(messages, bytes) of flow control for each stream: the totals divided between them,
    so all the streams together hold at most ``max_messages`` and ``max_bytes``. Never more
    streams than messages (each stream needs room for one)."""
    count = max(1, min(streams, max_messages))
    return [
        (max_messages // count + (1 if i < max_messages % count else 0), max(1, max_bytes // count))
        for i in range(count)
    ]


class Handler(Protocol):
    """What a :class:`Batcher` hands its batches to (:class:`BatchHandler`, :class:`LabelHandler`)."""

    deadline: float | None

    def handle(self, batch: Sequence[Delivery]) -> None: ...


class Batcher(threading.Thread):
    """The one thread that takes batches off the queue and hands them to the handler (one for
    images, one for labels)."""

    def __init__(
        self,
        handler: Handler,
        batch_size: int,
        linger_s: float,
        max_images: int = STEP_IMAGES,
        failing: FailingBatches | None = None,
        name: str = "bridge-batcher",
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.handler = handler
        self.failing = failing or FailingBatches(HELD_BATCH_BOUND_S)
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.max_images = max_images  # batch records: a batch stops once it holds about this many images
        self.queue: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self._closed = threading.Event()  # no more messages will be queued
        self._deadline: float | None = None

    def put(self, delivery: Delivery) -> None:
        """The streaming pull callback: runs on the library's threads, so it only queues."""
        self.queue.put(delivery)

    def drain(self, seconds: float) -> None:
        """The stream is closed: handle what is queued within ``seconds``, then end."""
        self._deadline = time.monotonic() + seconds
        self.handler.deadline = self._deadline
        self.stopping.set()
        self._closed.set()

    def run(self) -> None:
        try:
            while True:
                batch = self._take()
                if batch:
                    self._handle(batch)
                elif self._closed.is_set():
                    return
                if self._deadline is not None and time.monotonic() > self._deadline:
                    left = self.queue.qsize()
                    if left:
                        log.warning("stopping with %d messages unhandled: Pub/Sub redelivers them", left)
                    return
        except BaseException as exc:  # a bug: the main thread sees it and exits non-zero
            self.error = exc
            log.exception("the batching thread failed")

    def _take(self) -> list[Delivery]:
        try:
            batch = [self.queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        end = time.monotonic() + self.linger_s
        images = estimated_images(batch[0].data)
        while len(batch) < self.batch_size and images < self.max_images:
            remaining = end - time.monotonic()
            try:
                batch.append(self.queue.get_nowait() if remaining <= 0 else self.queue.get(timeout=remaining))
            except queue.Empty:
                break
            images += estimated_images(batch[-1].data)
        return batch

    def _handle(self, batch: list[Delivery]) -> None:
        """Retry a transient failure (outage) with backoff, not by nacking: a nack would
        spend the messages' delivery attempts and dead-letter them during an outage. One
        warning when the outage starts, one line when the batch goes through again."""
        delay = 0.5
        failed_at: float | None = None
        retries = 0
        while True:
            try:
                self.handler.handle(batch)
            except TransientError as exc:
                self.failing.failed()
                if self.stopping.is_set():
                    log.warning("stopping: %d messages left unacked (%s); Pub/Sub redelivers them", len(batch), exc)
                    return
                if failed_at is None:
                    failed_at = time.monotonic()
                    log.warning(
                        "%s; holding the batch of %d (nothing acked) and retrying with backoff up to %.0f s",
                        exc,
                        len(batch),
                        MAX_BACKOFF_SECONDS,
                    )
                else:
                    log.debug("%s; retry %d of the batch of %d in %.1f s", exc, retries, len(batch), delay)
                retries += 1
                self.stopping.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                continue
            self.failing.succeeded()
            if failed_at is not None:
                log.info(
                    "resumed: the held batch of %d went through after %.1f s and %d retries",
                    len(batch),
                    time.monotonic() - failed_at,
                    retries,
                )
            return


class Pruner(threading.Thread):
    """Deletes expired keys from the store: batches of ``limit``, each its own transaction,
    with a pause between them so the batching thread's commits get the write lock, and a
    check every ``interval_s`` once nothing is left to delete."""

    def __init__(
        self, store: Store, interval_s: float, limit: int = PRUNE_BATCH, pause_s: float = PRUNE_PAUSE_SECONDS
    ) -> None:
        super().__init__(name="bridge-pruner", daemon=True)
        self.store = store
        self.interval_s = interval_s
        self.limit = limit
        self.pause_s = pause_s
        self.stopping = threading.Event()

    what = "pruning the state store"

    def step(self) -> int:
        deleted = self.store.prune(self.limit)
        PRUNED.inc(deleted)
        LONGEST_PRUNE.set(self.store.longest_prune_s)
        return deleted

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                done = self.step()
            except self.store.transient_errors as exc:  # locked, I/O, database away: the next round tries again
                log.warning("%s failed (%s); retrying in %.0f s", self.what, exc, self.interval_s)
                done = 0
            self.stopping.wait(self.pause_s if done >= self.limit else self.interval_s)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


class LabelExpirer(Pruner):
    """Counts and removes the image ids whose label wait is over (``label_expired``, expired
    labels), :data:`~.store.EXPIRE_BATCH` per transaction, as the pruner deletes keys."""

    what = "expiring waiting labels"

    def __init__(self, store: Store, interval_s: float) -> None:
        super().__init__(store, interval_s, limit=EXPIRE_BATCH)
        self.name = "bridge-label-expirer"

    def step(self) -> int:
        removed = self.store.expire_labels(self.limit)
        EXPIRED.inc(removed)
        return removed


class RolloutFollower(threading.Thread):
    """Reads the rollout pointer from the store and hands it to the model switch, which
    loads and verifies new versions here, off the batching thread."""

    def __init__(self, store: Store, switch: ModelSwitch, interval_s: float = POINTER_POLL_SECONDS) -> None:
        super().__init__(name="bridge-rollout", daemon=True)
        self.store = store
        self.switch = switch
        self.interval_s = interval_s
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval_s):
            try:
                self.switch.apply(self.store.rollout_state())
            except self.store.transient_errors:  # the store is away: the batcher reports it; keep the models
                continue
            except ValueError as exc:  # a pointer row that is not one: keep the models, say why
                log.error("ignoring the rollout pointer in %s: %s", self.store.location, exc)
            except Exception:  # a bug must not stop following the pointer silently
                log.exception("following the rollout pointer failed; keeping the current models")

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


class BridgeHealth:
    """What the bridge's ``/healthz`` and ``/readyz`` read; the parts are set as the bridge starts."""

    def __init__(self, models: ModelSwitch, subscription: str) -> None:
        self.models = models
        self.subscription = subscription
        self.batcher: Batcher | None = None
        self.label_batcher: Batcher | None = None
        self.streams: list[Any] = []

    def _batchers(self) -> list[Batcher]:
        return [b for b in (self.batcher, self.label_batcher) if b is not None]

    def liveness(self) -> list[Check]:
        if self.batcher is None:
            return [Check("starting", True, "opening the streaming pulls")]
        ended = sum(1 for future in self.streams if future.done())
        dead = [b.name for b in self._batchers() if not b.is_alive()]
        failing = [b.failing.check() for b in self._batchers()]
        return [
            Check("batcher", not dead, f"batching threads died: {dead}" if dead else "running"),
            Check("streams", not ended, f"{len(self.streams) - ended} of {len(self.streams)} streaming pulls open"),
            next((check for check in failing if not check.ok), failing[0]),
        ]

    def readiness(self) -> list[Check]:
        streaming = bool(self.streams) and not any(future.done() for future in self.streams)
        held = any(b.failing.failing for b in self._batchers())
        return [
            Check("model", True, f"live model {self.models.current().live.version}"),
            Check("subscription", bool(self.streams), f"{self.subscription} present"),
            Check("streaming", streaming, f"{len(self.streams)} streaming pulls" if streaming else "not pulling"),
            Check(
                "store", not held, "a batch is held: publishing or the store fails" if held else "batches go through"
            ),
        ]


def run(settings: Settings) -> int:
    """The bridge's main loop; returns the process exit code."""
    from google.cloud import pubsub_v1

    stop = _install_signal_handlers()
    try:
        store = open_store(
            settings.bridge.state_url,
            horizon_s=settings.pipeline.dedupe_seconds,
            label_wait_s=settings.pipeline.label_wait_s,
        )
    except Exception as exc:  # not a database, bad credentials, a missing database, nobody listening
        log.error("%s", describe_open_error(settings.bridge.state_url, exc))
        return 1
    try:
        registry = ModelRegistry(
            settings.model.directory, settings.model.path, fail_on_white_images=settings.faults.white_images
        )
        models = ModelSwitch.start(registry, store.rollout_state())
    except (ModelError, ValueError) as exc:
        log.error("%s", exc)
        store.close()
        return 1
    except store.transient_errors as exc:  # the database went away right after opening: a supervisor restarts
        log.error("the state store %s became unavailable while starting (%s)", store.location, exc)
        store.close()
        return 1
    recent = RecentMistakes()
    subscriber = subscriber_client(settings.pubsub)
    subscription = subscriber.subscription_path(settings.pubsub.project, settings.pubsub.images_subscription)
    labels_subscription = subscriber.subscription_path(settings.pubsub.project, settings.pubsub.labels_subscription)
    for name in (subscription, labels_subscription):
        try:  # a missing subscription is reported at once, before the views answer as if all were well
            subscriber.get_subscription(request={"subscription": name})
        except GoogleAPICallError as exc:
            log.error("the bridge stopped on an error: %s", _explain(exc, name))
            subscriber.close()
            store.close()
            return 1
    health = BridgeHealth(models, subscription)
    views = Views(
        scores=lambda: store.scores,
        model_version=lambda: models.current().live.version,
        recent=recent,
        window_seconds=settings.pipeline.window_seconds,
        unavailable=store.transient_errors,
        totals=store.totals,
        rollout=models.status,
        manifest_of=models.manifest,
        liveness=health.liveness,
        readiness=health.readiness,
    )
    try:
        web = WebServer(views, settings.web.host, settings.bridge.web_port).start()
    except OSError as exc:
        log.error("cannot serve on %s:%s: %s (set BRIDGE_WEB_PORT)", settings.web.host, settings.bridge.web_port, exc)
        store.close()
        return 1

    publisher = BulkPublisher(
        pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(
                max_messages=1000, max_bytes=8 * 1024 * 1024, max_latency=0.005
            ),
            **settings.pubsub.client_kwargs(),
        )
    )
    error: BaseException | None = None
    with subscriber:
        acker = StreamAcker(subscriber, subscription)
        label_acker = StreamAcker(subscriber, labels_subscription)
        handler = BatchHandler(
            models,
            store,
            publisher,
            acker,
            settings.pipeline.max_message_bytes,
            settings.pipeline.window_seconds,
            predictions_topic=publisher.topic_path(settings.pubsub.project, settings.topics.predictions),
            dlq_topic=publisher.topic_path(settings.pubsub.project, settings.topics.dlq),
            recent=recent,
            max_batch_images=settings.pipeline.max_batch_images,
        )
        batcher = Batcher(handler, settings.pipeline.batch_size, settings.pipeline.batch_linger_s)
        batcher.start()
        health.batcher = batcher
        label_handler = LabelHandler(
            store,
            publisher,
            label_acker,
            settings.pipeline.window_seconds,
            dlq_topic=publisher.topic_path(settings.pubsub.project, settings.topics.dlq),
            max_message_bytes=settings.pipeline.max_message_bytes,
        )
        label_batcher = Batcher(
            label_handler, settings.pipeline.batch_size, settings.pipeline.batch_linger_s, name="bridge-labels"
        )
        label_batcher.start()
        health.label_batcher = label_batcher
        expirer = LabelExpirer(
            store, interval_s=min(LABEL_EXPIRY_EVERY_S, max(1.0, settings.pipeline.label_wait_s / 10))
        )
        expirer.start()
        # Expired keys leave within about a tenth of the horizon (1-60 s).
        pruner = Pruner(store, interval_s=min(60.0, max(1.0, settings.pipeline.dedupe_seconds / 10)))
        pruner.start()
        follower = RolloutFollower(store, models)
        follower.start()
        limits = stream_flow_limits(settings.bridge.max_messages, settings.bridge.max_bytes, settings.bridge.streams)

        def pull(name: str, put: Any, messages: int, size: int) -> Any:
            return subscriber.subscribe(
                name,
                put,
                flow_control=pubsub_v1.types.FlowControl(
                    max_messages=messages,
                    max_bytes=size,
                    # Leases are renewed this far ahead (the library's default is 60 s): after a
                    # crash, the messages this process held are redelivered about this soon.
                    max_duration_per_lease_extension=settings.pubsub.ack_deadline_s,
                ),
                await_callbacks_on_shutdown=True,
            )

        futures = [pull(subscription, batcher.put, messages, size) for messages, size in limits]
        label_futures = [pull(labels_subscription, label_batcher.put, *limits[0])]  # labels are small: one stream
        health.streams = futures + label_futures
        counted = committed_scores(store)
        where = f"emulator {settings.pubsub.emulator_host}" if settings.pubsub.emulator_host else "Google Cloud"
        log.info(
            "bridge running: model %s, pulling %s and %s on %s (%d streams), scores %s (%s images so far), web %s/",
            models.current().live.version,
            subscription,
            labels_subscription,
            where,
            len(futures),
            store.location,
            "unknown" if counted is None else counted.images,
            web.url,
        )
        while not stop.wait(POLL_SECONDS):
            if any(future.done() for future in health.streams) or not (batcher.is_alive() and label_batcher.is_alive()):
                break
        if stop.is_set():
            log.info("stopping: no more pulls, finishing what is in flight")
        closed = [acker.close_streams(futures), label_acker.close_streams(label_futures)]
        error = closed[0] or closed[1]
        for each in (batcher, label_batcher):
            each.drain(DRAIN_SECONDS)
        for each in (batcher, label_batcher):
            each.join(DRAIN_SECONDS + 5)
            error = error or each.error
        pruner.stop()
        expirer.stop()
        follower.stop()
    publisher.stop()  # flushes anything still batched
    web.stop()
    totals = committed_scores(store)
    store.close()
    if error is not None:
        log.error("the bridge stopped on an error: %s", _explain(error, subscription))
        return 1
    if totals is None:
        log.info("stopped cleanly; the totals could not be read (the store is unavailable)")
    else:
        log.info("stopped cleanly: %d images counted, accuracy %s", totals.images, totals.report(None)["accuracy"])
    return 0


def committed_scores(store: Store) -> Scores | None:
    """The fleet's committed totals for a log line, or None while the store is away.

    The main thread reads them once the web server and the streams are up; a database
    restart at that moment must not end the bridge with a traceback (the batcher holds its
    batch through the outage and ``/accuracy/`` answers 503 until the store is back)."""
    try:
        return store.scores
    except store.transient_errors as exc:
        log.warning("the state store %s is unavailable (%s); the totals are not logged", store.location, exc)
        return None


def _install_signal_handlers() -> threading.Event:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now; unacked messages will be redelivered", signal.Signals(signum).name)
            os._exit(1)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def _explain(error: BaseException, subscription: str) -> str:
    from google.api_core import exceptions as gexc

    if isinstance(error, gexc.NotFound):
        return f"{subscription} not found: create it with `python -m pubsub_bridge setup`"
    if isinstance(error, gexc.PermissionDenied):
        return f"permission denied on {subscription}: the credentials need roles/pubsub.subscriber ({error})"
    return repr(error)
