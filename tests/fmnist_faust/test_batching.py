"""The agent's batching: what has been fetched goes out at once, up to the batch size, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from fmnist_faust.batching import batches
from fmnist_faust.core.pipeline import RawMessage
from fmnist_faust.fetches import Fetch, FetchedRecords, fetch_of

TP0, TP1 = TP("images", 0), TP("images", 1)


def folded(tp: TP, offsets: list[int], generation: int = 1) -> Any:
    """An event as the consumer delivers a fetch of ``tp`` (see fmnist_faust.fetches)."""
    records = FetchedRecords(offsets, [RawMessage(f"v{o}".encode(), b"k", 1.0) for o in offsets])
    return SimpleNamespace(message=SimpleNamespace(tp=tp, generation_id=generation), value=records)


class Events:
    """Scripted stream events; ``queued()`` is true while the next one is already there."""

    def __init__(self, events: list[tuple[float, Any]]) -> None:
        self.events = events
        self.next = 0

    def queued(self) -> bool:
        return self.next < len(self.events) and self.events[self.next][0] == 0.0

    async def __aiter__(self) -> AsyncIterator[Any]:
        while self.next < len(self.events):
            delay, event = self.events[self.next]
            await asyncio.sleep(delay)
            self.next += 1
            yield event
        await asyncio.sleep(3600)  # a stream does not end by itself


def offsets_of(batch: list[Fetch]) -> list[tuple[int, list[int]]]:
    return [(fetch.partition, fetch.offsets) for fetch in batch]


async def collect(events: Events, size: int, count: int) -> list[list[Fetch]]:
    out: list[list[Fetch]] = []
    gen = batches(events.__aiter__(), size, events.queued)
    async for batch in gen:
        out.append(batch)
        if len(out) == count:
            break
    await gen.aclose()
    return out


def test_a_fetch_alone_goes_out_at_once() -> None:
    events = Events([(0.0, folded(TP0, [1, 2])), (0.05, folded(TP1, [7])), (0.05, folded(TP0, [3]))])
    loop_times: list[float] = []

    async def run() -> list[list[Fetch]]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        gen = batches(events.__aiter__(), 500, events.queued)
        first = await gen.__anext__()
        loop_times.append(loop.time() - start)
        rest = [await gen.__anext__(), await gen.__anext__()]
        await gen.aclose()
        return [first, *rest]

    out = asyncio.run(run())
    assert [offsets_of(b) for b in out] == [[(0, [1, 2])], [(1, [7])], [(0, [3])]]
    assert loop_times[0] < 0.04  # no linger: the first fetch did not wait for the next one


def test_queued_fetches_are_joined_and_cut_at_the_batch_size_in_order() -> None:
    events = Events([(0.0, folded(TP0, [0, 1, 2])), (0.0, folded(TP1, [5, 6, 7, 8])), (0.0, folded(TP0, [3]))])
    out = asyncio.run(collect(events, 4, 2))
    assert [offsets_of(b) for b in out] == [[(0, [0, 1, 2]), (1, [5])], [(1, [6, 7, 8]), (0, [3])]]


def test_a_fetch_larger_than_a_batch_is_cut_into_full_batches() -> None:
    events = Events([(0.0, folded(TP0, list(range(10))))])
    out = asyncio.run(collect(events, 4, 3))
    assert [offsets_of(b) for b in out] == [[(0, [0, 1, 2, 3])], [(0, [4, 5, 6, 7])], [(0, [8, 9])]]
    assert all(fetch.generation == 1 for batch in out for fetch in batch)


def test_an_event_put_alone_is_a_fetch_of_one_record() -> None:
    message = SimpleNamespace(tp=TP0, generation_id=3, offset=41, key=b"k", timestamp=2.5)
    fetch = fetch_of(SimpleNamespace(message=message, value=b"raw"))
    assert fetch == Fetch(TP0, 3, [41], [RawMessage(b"raw", b"k", 2.5)])
