"""The topics of the wire contract, all carried as raw bytes.

Values are decoded by :mod:`fmnist_faust.core.contract`, never by a Faust codec, so
that a malformed message reaches the agent and can be dead-lettered instead of
crashing the stream. ``internal=True`` lets Faust create them with the configured
partition count.
"""

from typing import Any

import faust

from .faust_app import app, settings
from .fetches import FetchSchema
from .offsets import fold_fetches


def _raw_topic(*names: str, acks: bool = True, schema: type[faust.Schema] = faust.Schema) -> Any:
    return app.topic(
        *names,
        schema=schema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"),
        partitions=settings.kafka.partitions,
        internal=True,
        acks=acks,
    )


# No Faust acks for images: the worker commits and resumes by its score rows (:mod:`.offsets`),
# never by acked offsets, so Faust's per-event ack bookkeeping (unacked set, acked-offset
# lists under a lock, a sensor call) was pure cost: 11% of the worker's CPU per image in
# ``python -m bench.ab`` (0.105 instead of 0.118 ms). A rebalance no longer waits for the batch
# in flight to be acked; that batch is fenced by its generation (``agents._count``).
# Each fetch of an images (or labels) partition reaches the agent as one event (:mod:`.fetches`).
# The classify agent reads both through one channel (``inputs_topic``), so one batch at a
# time changes a partition's score row and label-join state; Faust co-partitions two topics
# of the same partition count read by the same workers (the partition guard checks the
# counts), so labels partition p is where the images of partition p are counted.
images_topic = _raw_topic(settings.topics.images, acks=False, schema=FetchSchema)
# No labels with exactly_once (``KafkaSettings.reads_labels``): then the agent reads images only.
_reads_labels = settings.kafka.reads_labels
_inputs = [settings.topics.images, *([settings.topics.labels] if _reads_labels else [])]
labels_topic = _raw_topic(settings.topics.labels, acks=False, schema=FetchSchema) if _reads_labels else None
inputs_topic = _raw_topic(*_inputs, acks=False, schema=FetchSchema)
fold_fetches(_inputs)
predictions_topic = _raw_topic(settings.topics.predictions)
dlq_topic = _raw_topic(settings.topics.dlq)
