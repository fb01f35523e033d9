"""The three topics of the wire contract, all carried as raw bytes.

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


def _raw_topic(name: str, acks: bool = True, schema: type[faust.Schema] = faust.Schema) -> Any:
    return app.topic(
        name,
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
# Each fetch of an images partition reaches the agent as one event (:mod:`.fetches`).
images_topic = _raw_topic(settings.topics.images, acks=False, schema=FetchSchema)
fold_fetches([settings.topics.images])
predictions_topic = _raw_topic(settings.topics.predictions)
dlq_topic = _raw_topic(settings.topics.dlq)
