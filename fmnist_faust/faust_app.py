"""Binds the Faust ``app``; agents, tables, views and commands live in their own modules."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

import faust
from mode.utils.objects import cached_property

from .config import load_settings
from .offsets import ReadAgainOnClear, RowOffsetTransport, use_transactions
from .recovery import FencingTableManager, hooks

settings = load_settings()
log = logging.getLogger(__name__)
if settings.kafka.exactly_once:
    use_transactions()


class App(faust.App):
    """A Faust App whose consumer commits and resumes by the score rows (see :mod:`.offsets`)."""

    def _new_transport(self) -> Any:
        return RowOffsetTransport(self.conf.broker_consumer, self)

    @cached_property
    def flow_control(self) -> ReadAgainOnClear:
        return ReadAgainOnClear(loop=self.loop)

    async def on_start(self) -> None:
        """Verify the model and create the output topics before the consumer, the agents and
        the web views start (``agents.prepare``; imported here: that module imports this one)."""
        from .agents import prepare

        loop = asyncio.get_running_loop()
        log.info("event loop: %s.%s", type(loop).__module__, type(loop).__name__)
        await prepare()
        await super().on_start()


def exit_now(status: int) -> None:
    """End the process at once with ``status``, the log flushed: for states the worker must
    not run on (a supervisor restarts it). Nothing is lost: offsets are committed from the
    score rows only, so what was not counted is read again."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(status)


app = App(
    settings.kafka.app_id,
    broker=settings.kafka.broker_url,
    broker_credentials=settings.kafka.security.faust_credentials(),
    store="memory://",
    datadir=str(settings.kafka.worker_datadir),
    topic_partitions=settings.kafka.partitions,
    topic_replication_factor=1,
    web_bind=settings.web.host,
    web_host=settings.web.host,
    web_port=settings.web.port,
    autodiscover=False,
    origin="fmnist_faust",
    producer_max_request_size=4 * 1024 * 1024,
    # A batch's predictions for one partition fit one record batch (agents._publish: ~220 B
    # each, 500 per batch), not seven 16 KiB ones, each waiting for the previous one to leave:
    # +11% images/s in make bench's per_record stage. Under the broker's 1 MiB message limit.
    producer_max_batch_size=256 * 1024,
    consumer_max_fetch_size=4 * 1024 * 1024,
    broker_session_timeout=settings.kafka.session_timeout_s,
    broker_heartbeat_interval=min(3.0, settings.kafka.session_timeout_s / 10),
    broker_commit_every=10_000,
    broker_commit_interval=1.0,
    # In events, and an images event is a whole fetch of one partition (fetches.py): at most
    # this many fetches of <= consumer_max_fetch_size wait for the agent (a fuller buffer
    # pauses the partition), 64 MiB of records at most.
    stream_buffer_maxsize=16,
    # Fences the transactional ids before recovery and ends recovery at transaction markers
    # (exactly_once only; a no-op otherwise): see recovery.py.
    TableManager=FencingTableManager,
)
hooks.delivered = lambda tp: app.consumer.delivered(tp)  # where recovery may stop at markers
