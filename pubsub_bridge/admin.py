"""``setup``: the topics and subscriptions the bridge uses, created idempotently.

Topics: images, labels (delayed labels, joined to their images by id), predictions,
images-dlq (messages that break the contract, with the reason) and images-dead-letter (messages whose handling kept failing: Pub/Sub moves
them there after ``PUBSUB_MAX_DELIVERY_ATTEMPTS`` deliveries, so a poison message is
never redelivered forever). Each topic the bridge writes has a subscription, so nothing
published there is dropped for want of a reader.

Running it again changes nothing, except that an existing subscription whose settings
differ (ack deadline, dead-letter policy, retention) is updated to the configured ones.

Retention of the images subscription = the dedupe horizon (``FMNIST_DEDUPE_SECONDS``):
the bridge counts a message before it acks it, so a counted-but-unacked message can come
back for as long as the subscription retains it; with retention <= horizon it can never
come back after its id left the bridge's store. Pub/Sub accepts 10 minutes to 7 days: a
longer horizon is clamped to 7 days (still safe), a shorter one to 10 minutes with a
warning (a message unacked for longer than the horizon could then be counted twice).
The labels subscription gets the same retention and dead-letter policy, for the same
reasons: the bridge recognises a redelivered label by its message id within the horizon.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from google.api_core import exceptions as gexc
from google.protobuf import field_mask_pb2, timestamp_pb2

from fmnist_faust.config import Settings

# The subscription settings setup brings back to the configured ones.
_RECONCILED = ("ack_deadline_seconds", "dead_letter_policy", "message_retention_duration")
MIN_RETENTION_S = 600  # Pub/Sub's bounds on message_retention_duration
MAX_RETENTION_S = 7 * 24 * 3600

log = logging.getLogger(__name__)


def images_retention_s(settings: Settings) -> int:
    """The images subscription's retention: the dedupe horizon within Pub/Sub's bounds."""
    return int(min(MAX_RETENTION_S, max(MIN_RETENTION_S, settings.pipeline.dedupe_seconds)))


def retention_warning(settings: Settings) -> str | None:
    """Why the configured horizon cannot cover the images subscription's retention, if so."""
    if settings.pipeline.dedupe_seconds >= MIN_RETENTION_S:
        return None
    return (
        f"warning: FMNIST_DEDUPE_SECONDS={settings.pipeline.dedupe_seconds:g} is shorter than Pub/Sub's minimum "
        f"retention ({MIN_RETENTION_S} s): {settings.pubsub.images_subscription} retains messages for "
        f"{MIN_RETENTION_S} s, so one left unacked for longer than the horizon could be counted twice"
    )


class SetupError(RuntimeError):
    """A resource exists in a shape setup cannot fix (e.g. a subscription on another topic)."""


@dataclass
class SubscriptionSpec:
    name: str
    topic: str
    options: dict[str, Any] = field(default_factory=dict)


def _clients(settings: Settings) -> tuple[Any, Any]:
    from google.cloud import pubsub_v1

    credentials = settings.pubsub.client_kwargs()
    return pubsub_v1.PublisherClient(**credentials), pubsub_v1.SubscriberClient(**credentials)


def plan(settings: Settings) -> tuple[list[str], list[SubscriptionSpec]]:
    """Topic ids and subscription specs (names relative to the project)."""
    from google.pubsub_v1 import types

    project = settings.pubsub.project
    topics = [
        settings.topics.images,
        settings.topics.labels,
        settings.topics.predictions,
        settings.topics.dlq,
        settings.pubsub.dead_letter_topic,
    ]
    common = {"ack_deadline_seconds": settings.pubsub.ack_deadline_s}
    images = dict(
        common,
        message_retention_duration=timedelta(seconds=images_retention_s(settings)),
        dead_letter_policy=types.DeadLetterPolicy(
            dead_letter_topic=f"projects/{project}/topics/{settings.pubsub.dead_letter_topic}",
            max_delivery_attempts=settings.pubsub.max_delivery_attempts,
        ),
    )
    # No retry policy: the bridge waits out outages itself (it only nacks a message whose
    # handling fails on its own), so immediate redelivery sends a poison message to the
    # dead-letter topic within seconds; and with a backoff policy the emulator holds back the
    # messages of a crashed bridge for minutes.
    subscriptions = [
        SubscriptionSpec(settings.pubsub.images_subscription, settings.topics.images, images),
        SubscriptionSpec(settings.pubsub.labels_subscription, settings.topics.labels, dict(images)),
        SubscriptionSpec(settings.pubsub.predictions_subscription, settings.topics.predictions, dict(common)),
        SubscriptionSpec(settings.pubsub.dlq_subscription, settings.topics.dlq, dict(common)),
        SubscriptionSpec(settings.pubsub.dead_letter_subscription, settings.pubsub.dead_letter_topic, dict(common)),
    ]
    return topics, subscriptions


def setup(settings: Settings, purge: bool = False) -> list[str]:
    """Create what is missing, reconcile what differs; returns one line per resource."""
    from google.pubsub_v1 import types

    publisher, subscriber = _clients(settings)
    project = settings.pubsub.project
    topics, subscriptions = plan(settings)
    lines: list[str] = []
    with subscriber:
        for topic in topics:
            path = publisher.topic_path(project, topic)
            try:
                publisher.create_topic(name=path)
                lines.append(f"created topic {path}")
            except gexc.AlreadyExists:
                lines.append(f"exists  topic {path}")
        for spec in subscriptions:
            path = subscriber.subscription_path(project, spec.name)
            wanted = types.Subscription(name=path, topic=publisher.topic_path(project, spec.topic), **spec.options)
            lines.append(_ensure_subscription(subscriber, wanted))
        if purge:
            for name in (settings.pubsub.images_subscription, settings.pubsub.predictions_subscription):
                path = subscriber.subscription_path(project, name)
                now = timestamp_pb2.Timestamp()
                now.GetCurrentTime()
                subscriber.seek(request={"subscription": path, "time": now})
                lines.append(f"purged  subscription {path} (backlog acknowledged)")
    publisher.stop()
    warning = retention_warning(settings)
    if warning:
        log.warning("%s", warning)
        lines.append(warning)
    if not settings.pubsub.emulator_host:
        lines.append(_dead_letter_note(settings))
    return lines


def teardown(settings: Settings) -> None:
    """Delete the subscriptions and topics :func:`plan` names (a test's or a measurement's own)."""
    publisher, subscriber = _clients(settings)
    topics, subscriptions = plan(settings)
    with subscriber:
        for spec in subscriptions:
            subscriber.delete_subscription(
                subscription=subscriber.subscription_path(settings.pubsub.project, spec.name)
            )
        for topic in topics:
            publisher.delete_topic(topic=publisher.topic_path(settings.pubsub.project, topic))
    publisher.stop()


def _ensure_subscription(subscriber: Any, wanted: Any) -> str:
    try:
        subscriber.create_subscription(request=wanted)
        return f"created subscription {wanted.name} (on {wanted.topic})"
    except gexc.AlreadyExists:
        pass
    current = subscriber.get_subscription(subscription=wanted.name)
    if current.topic != wanted.topic:
        raise SetupError(
            f"subscription {wanted.name} exists on {current.topic}, not {wanted.topic}: "
            "delete it or configure another name"
        )
    differ = [f for f in _RECONCILED if f in wanted and getattr(current, f) != getattr(wanted, f)]
    if not differ:
        return f"exists  subscription {wanted.name}"
    subscriber.update_subscription(
        request={"subscription": wanted, "update_mask": field_mask_pb2.FieldMask(paths=differ)}
    )
    return f"updated subscription {wanted.name} ({', '.join(differ)})"


def _dead_letter_note(settings: Settings) -> str:
    topic = settings.pubsub.dead_letter_topic
    sub = settings.pubsub.images_subscription
    return (
        "note: on Google Cloud, dead-lettering needs the Pub/Sub service agent "
        "(service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com) to hold "
        f"roles/pubsub.publisher on topic {topic} and roles/pubsub.subscriber on subscription {sub}:\n"
        f"  gcloud pubsub topics add-iam-policy-binding {topic} --member=serviceAccount:SERVICE_AGENT "
        "--role=roles/pubsub.publisher\n"
        f"  gcloud pubsub subscriptions add-iam-policy-binding {sub} --member=serviceAccount:SERVICE_AGENT "
        "--role=roles/pubsub.subscriber"
    )
