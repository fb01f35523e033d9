"""The classify agent: a thin Kafka adapter over :func:`core.pipeline.classify_batch`.

Per batch: skip events a table row already covers (replay after a crash), classify the
rest in one predict call, publish predictions and dead letters and wait for the broker
to ack them, then write each partition's score row (offset-stamped). Offsets are
committed by Faust only after that, so nothing is lost and nothing counted twice.
A distinct message re-using an id already counted in its partition is neither counted
nor published again (the core's duplicate rule; see ``tables.seen_table``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Iterable
from functools import lru_cache
from typing import Any

from . import metrics
from .core.contract import InvalidMessage, Prediction, dead_letter_attributes
from .core.model import Classifier, load_classifier
from .core.pipeline import BatchResult, RawMessage, classify_batch, repeats
from .core.recent import RecentMistakes
from .faust_app import app, settings
from .tables import counted_at, mark_counted, read_row, write_row
from .topics import dlq_topic, images_topic, predictions_topic

log = logging.getLogger(__name__)
recent_mistakes = RecentMistakes()


@lru_cache(maxsize=1)
def get_classifier() -> Classifier:
    """Load and verify the model once per worker process."""
    classifier = load_classifier(settings.model.path)
    log.info(
        "model loaded: version %s (test accuracy %s)", classifier.version, classifier.manifest.get("test_accuracy")
    )
    return classifier


@app.task
async def prepare() -> None:
    """At start-up: verify and load the model (a bad one stops the worker at once, not at the
    first image), and create predictions and DLQ with the configured partitions, well
    before the first partition assignment lets the agent send."""
    try:
        get_classifier()
    except Exception as exc:
        log.critical("cannot load the model: %s", exc)
        await app.crash(exc)
        return
    for topic in (predictions_topic, dlq_topic):
        await topic.maybe_declare()


@app.agent(images_topic)
async def classify(stream: Any) -> None:
    async for events in stream.take_events(settings.pipeline.batch_size, within=settings.pipeline.batch_linger_s):
        await process_events(events)


async def process_events(events: list[Any]) -> None:
    """Classify one batch of Faust events and record it exactly once."""
    applied = {p: read_row(p) for p in {e.message.partition for e in events}}
    fresh = [e for e in events if e.message.offset > applied[e.message.partition][0]]
    if len(fresh) < len(events):
        log.info("skipped %d replayed events already counted", len(events) - len(fresh))
    if not fresh:
        return
    classifier = get_classifier()
    messages = [RawMessage(value=e.message.value, key=e.message.key, timestamp=e.message.timestamp) for e in fresh]
    with metrics.PREDICT_SECONDS.time():
        result = classify_batch(classifier, messages, settings.pipeline.max_message_bytes)
    duplicates, marks = await _duplicate_ids(fresh, result, {p: row[0] for p, row in applied.items()})
    counted = result.without(duplicates)
    await _publish(counted)
    await asyncio.gather(*marks)  # the ids are durable before the rows that count them

    by_partition: dict[int, list[int]] = defaultdict(list)
    for index, event in enumerate(fresh):
        by_partition[event.message.partition].append(index)
    for partition, indices in by_partition.items():
        _, scores = applied[partition]
        wanted = set(indices) - duplicates
        result.subset(wanted.__contains__).apply_to(scores, settings.pipeline.window_seconds)
        last_offset = max(fresh[i].message.offset for i in indices)
        write_row(partition, last_offset, scores, classifier.version)
    metrics.observe_batch(counted, len(duplicates))
    recent_mistakes.add_batch(counted)


async def _duplicate_ids(
    fresh: list[Any], result: BatchResult, applied: dict[int, int]
) -> tuple[set[int], list[Awaitable[Any]]]:
    """Indices of images whose id was already counted in their partition; marks the others.

    An earlier mark only counts if its offset is <= the partition's applied offset (older
    than this batch, so its row was written) or it was made earlier in this batch.
    """
    keys = [
        f"{event.message.partition}/{outcome.id}" if isinstance(outcome, Prediction) else None
        for event, outcome in zip(fresh, result.outcomes)
    ]

    def counted(index: int, key: str) -> bool:
        partition = fresh[index].message.partition
        earlier = counted_at(partition, key.split("/", 1)[1])
        return earlier is not None and earlier <= applied[partition]

    duplicates = repeats(keys, counted)
    marks: dict[int, dict[str, int]] = defaultdict(dict)  # partition -> id -> offset
    for index, (event, outcome) in enumerate(zip(fresh, result.outcomes)):
        if isinstance(outcome, Prediction) and index not in duplicates:
            marks[event.message.partition][outcome.id] = event.message.offset
    if duplicates:
        log.info("not counting %d images whose id was already counted", len(duplicates))
    acks: list[Awaitable[Any]] = []
    for partition, new in marks.items():
        if new:
            acks.extend(await mark_counted(partition, list(new.items())))
    return duplicates, acks


async def _publish(result: BatchResult) -> None:
    """Send one prediction per valid image and each invalid message to the DLQ; await acks."""
    producer = app.producer
    predictions = predictions_topic.get_topic_name()
    dlq = dlq_topic.get_topic_name()
    pending: list[Awaitable[Any]] = []
    rejected = result.rejections
    if rejected:  # one line per batch, not per message: a garbage producer must not flood the log
        log.warning("dead-lettering %d message(s) to %s, first: %s", len(rejected), dlq, rejected[0][1])
    for message, outcome in zip(result.messages, result.outcomes):
        if isinstance(outcome, InvalidMessage):
            headers = [(name, value.encode()) for name, value in dead_letter_attributes(outcome).items()]
            pending.append(await producer.send(dlq, _as_bytes(message.key), message.value, None, None, headers))
        else:
            pending.append(
                await producer.send(predictions, outcome.id.encode("utf-8"), outcome.encode(), None, None, None)
            )
    await asyncio.gather(*pending)


def _as_bytes(key: Iterable[int] | str | bytes | None) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)
