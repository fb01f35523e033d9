"""The three topics of the wire contract, all carried as raw bytes.

Values are decoded by :mod:`fmnist_faust.core.contract`, never by a Faust codec, so
that a malformed message reaches the agent and can be dead-lettered instead of
crashing the stream.
"""

from .app import app, settings

images_topic = app.topic(
    settings.images_topic,
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
    partitions=settings.partitions,
    internal=True,
)
predictions_topic = app.topic(
    settings.predictions_topic,
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
    partitions=settings.partitions,
    internal=True,
)
dlq_topic = app.topic(
    settings.dlq_topic,
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
    partitions=settings.partitions,
    internal=True,
)
