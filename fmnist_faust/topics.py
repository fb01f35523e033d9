"""The three topics of the wire contract, all carried as raw bytes.

Values are decoded by :mod:`fmnist_faust.core.contract`, never by a Faust codec, so
that a malformed message reaches the agent and can be dead-lettered instead of
crashing the stream. ``internal=True`` lets Faust create them with the configured
partition count.
"""

from typing import Any

from .faust_app import app, settings


def _raw_topic(name: str) -> Any:
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.kafka.partitions,
        internal=True,
    )


images_topic = _raw_topic(settings.topics.images)
predictions_topic = _raw_topic(settings.topics.predictions)
dlq_topic = _raw_topic(settings.topics.dlq)
