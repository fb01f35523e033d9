"""Refuse to run when the images topic has more partitions than the tables' changelogs, or
the labels topic another count than the images topic.

A score row, the seen-id marks and the label-join state of images partition ``p`` live in
partition ``p`` of their changelog topics, so an images partition without one cannot be
counted: before this guard, the worker failed every batch holding one and read it again
forever. Delayed labels join their images in one partition: labels partition ``p`` must
hold the labels of the images of partition ``p``, which is so only when both topics have
the same partition count (the key, the image id, picks the partition the same way in
both); with another count they are not co-partitioned, labels would wait for images that
are elsewhere, and the worker refuses to start (exit :data:`EXIT_PARTITIONS`, one line). Growing the
changelogs from inside a running group is not safe (every worker's tables must agree on
the new count at the same rebalance), so the worker exits with :data:`EXIT_PARTITIONS` and
one CRITICAL line naming the topics, the counts and the commands that fix it.

Nothing is committed past an uncounted image: a batch is checked before anything of it
is classified or sent, and offsets are committed from score rows only (:mod:`.offsets`),
which the new partitions do not have. Checked at start (:func:`check_at_start`), on every
batch (:func:`check_partitions`) and every :data:`CHECK_EVERY_S` against the topic's
metadata (:func:`watch`), so growth is refused within that bound even on a worker that is
not (yet) assigned a new partition.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from .faust_app import app, exit_now, settings
from .tables import join_table, scores_table, seen_table
from .topics import images_topic

log = logging.getLogger(__name__)

EXIT_PARTITIONS = 4
CHECK_EVERY_S = 5.0


class Limit:
    """Partitions the changelogs have (the tables' configured count until measured)."""

    partitions = settings.kafka.partitions


limit = Limit()
_admin: Any = None


def changelog_topics() -> list[str]:
    tables = [scores_table, seen_table, *([join_table] if join_table is not None else [])]
    return [table.changelog_topic.get_topic_name() for table in tables]


def _labels_name() -> list[str]:
    """The labels topic when the worker reads it (none with exactly_once), as a list: its count is
    asked only then, and a topic not asked for counts 0 (never refused)."""
    return [settings.topics.labels] if settings.kafka.reads_labels else []


async def partition_counts(topics: list[str]) -> dict[str, int]:
    """Partitions of each of ``topics`` that exists, from the cluster's metadata."""
    global _admin
    from aiokafka.admin import AIOKafkaAdminClient

    if _admin is None:
        _admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka.bootstrap_servers, **settings.kafka.security.aiokafka_kwargs()
        )
        await _admin.start()
    described = await _admin.describe_topics(topics)
    return {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0 and t["partitions"]}


async def check_at_start() -> None:
    """Exit if the images topic already has more partitions than the changelogs (which Faust
    creates with ``FMNIST_PARTITIONS`` when they do not exist yet), or the labels topic
    another count than the images topic."""
    names = changelog_topics()
    images_name, labels_name = images_topic.get_topic_name(), settings.topics.labels
    counts = await partition_counts([images_name, *_labels_name(), *names])
    limit.partitions = min([settings.kafka.partitions, *(counts[n] for n in names if n in counts)])
    images = counts.get(images_name, 0)
    if images > limit.partitions:
        refuse(images)
    labels = counts.get(labels_name, 0)
    if images and labels and labels != images:
        refuse_labels(images, labels)


async def check_partitions(partitions: Iterable[int]) -> None:
    """Exit if any of ``partitions`` (of the images topic) has no changelog partition."""
    highest = max(partitions, default=-1)
    if highest >= limit.partitions:
        try:
            images = (await partition_counts([images_topic.get_topic_name()]))[images_topic.get_topic_name()]
        except Exception:  # the broker is away: the partition seen is a lower bound
            images = highest + 1
        refuse(max(images, highest + 1))


@app.timer(CHECK_EVERY_S)
async def watch() -> None:
    """Notice growth of the images topic before a rebalance hands this worker a new partition."""
    images_name, labels_name = images_topic.get_topic_name(), settings.topics.labels
    try:
        counts = await partition_counts([images_name, *_labels_name()])
    except Exception as exc:  # the broker is away: batches report it; check again next time
        log.debug("could not read the images topic's partitions: %r", exc)
        return
    images, labels = counts.get(images_name, 0), counts.get(labels_name, 0)
    if images > limit.partitions:
        refuse(images)
    if images and labels and labels != images:
        refuse_labels(images, labels)


def refuse(images_partitions: int) -> None:
    """One CRITICAL line with the fix, then exit at once: nothing of a new partition was counted."""
    topic, changelogs, n = images_topic.get_topic_name(), changelog_topics(), images_partitions
    # the labels topic goes with the images: the same count, or labels miss their images
    grow = " && ".join(
        f"kafka-topics.sh --bootstrap-server {settings.kafka.bootstrap_servers} --alter --topic {name} --partitions {n}"
        for name in [*changelogs, *_labels_name()]
    )
    log.critical(
        "refusing to count: topic %s has %d partitions but the changelog topics %s have %d, so images of "
        "partitions %d-%d cannot be counted; fix: %s, then restart every worker with FMNIST_PARTITIONS=%d",
        topic,
        n,
        " and ".join(changelogs),
        limit.partitions,
        limit.partitions,
        n - 1,
        grow,
        n,
    )
    exit_now(EXIT_PARTITIONS)


def refuse_labels(images_partitions: int, labels_partitions: int) -> None:
    """One CRITICAL line with the fix, then exit: labels and images of one id must share a partition."""
    images, labels = images_topic.get_topic_name(), settings.topics.labels
    log.critical(
        "refusing to count: topic %s has %d partitions but %s has %d, so a label would not land in the partition "
        "of its image and could never join it; fix: give %s %d partitions (kafka-topics.sh --bootstrap-server %s "
        "--alter --topic %s --partitions %d if it has fewer; delete and recreate it if it has more), then restart",
        labels,
        labels_partitions,
        images,
        images_partitions,
        labels,
        images_partitions,
        settings.kafka.bootstrap_servers,
        labels,
        images_partitions,
    )
    exit_now(EXIT_PARTITIONS)
