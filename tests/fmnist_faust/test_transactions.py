"""The fence of :mod:`fmnist_faust.transactions` is bounded: a producer that cannot start is
started again until the bound, then the fence fails (the worker then stops with one line),
never a rebalance left waiting."""

from __future__ import annotations

import asyncio
import logging

import pytest
from faust.types import TP

from fmnist_faust.config import load_settings
from fmnist_faust.transactions import FenceFailed, PartitionProducers
from support import free_port


def test_a_fence_whose_producers_cannot_start_retries_then_fails_within_its_bound(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens: every start is refused
    settings = load_settings({"KAFKA_BOOTSTRAP_SERVERS": nobody, "FMNIST_PROCESSING_GUARANTEE": "exactly_once"})
    producers = PartitionProducers(settings)
    monkeypatch.setattr(PartitionProducers, "fence_bound_s", 2.5)
    images = settings.topics.images

    async def fence() -> None:
        await producers.fence({TP(images, 0), TP(images, 1), TP("other", 2)})

    with caplog.at_level(logging.WARNING, logger="fmnist_faust.transactions"):
        with pytest.raises(FenceFailed, match="images partition [01]: no transactional producer"):
            asyncio.run(fence())
    retried = [r for r in caplog.records if "did not start" in r.getMessage()]
    assert {r.args[0] for r in retried} == {0, 1}  # type: ignore[index]
    assert producers.get(0) is None and producers.get(1) is None
