"""The agent's batching: chunks as they come without a backlog, full batches under one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fmnist_faust.batching import FILL_LINGERS, batches


class FakeStream:
    """``take_events`` handing over scripted chunks, each after its delay (as Faust's would
    after a linger); records when a chunk was asked for."""

    def __init__(self, chunks: list[tuple[float, list[int]]]) -> None:
        self.chunks = chunks
        self.asked: list[int] = []
        self.closed = False

    async def take_events(self, size: int, within: float) -> AsyncIterator[list[int]]:
        try:
            for index, (delay, chunk) in enumerate(self.chunks):
                self.asked.append(index)
                await asyncio.sleep(delay)
                assert len(chunk) <= size
                yield chunk
            await asyncio.sleep(3600)  # a stream does not end by itself: it waits for events
        finally:
            self.closed = True


async def collect(stream: FakeStream, size: int, linger: float, backlog: Any, count: int) -> list[list[int]]:
    out: list[list[int]] = []
    gen = batches(stream, size, linger, backlog)
    async for batch in gen:
        out.append(batch)
        if len(out) == count:
            break
    await gen.aclose()
    return out


def test_without_a_backlog_each_chunk_goes_out_as_it_comes() -> None:
    stream = FakeStream([(0.0, [1, 2]), (0.01, [3]), (0.01, [4, 5, 6])])
    out = asyncio.run(collect(stream, 10, 0.01, lambda: False, 3))
    assert out == [[1, 2], [3], [4, 5, 6]]


def test_under_a_backlog_chunks_are_joined_into_batches_of_size() -> None:
    chunks = [(0.001, list(range(i * 3, i * 3 + 3))) for i in range(7)]  # 21 events in chunks of 3
    stream = FakeStream(chunks)
    out = asyncio.run(collect(stream, 8, 0.01, lambda: True, 2))
    assert out == [list(range(0, 8)), list(range(8, 16))]  # split at size, in order, nothing lost


def test_a_backlog_that_does_not_come_in_time_lets_the_batch_go() -> None:
    linger = 0.01
    stream = FakeStream([(0.0, [1, 2]), (FILL_LINGERS * linger * 5, [3])])
    loop_times: list[float] = []

    async def run() -> list[list[int]]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        gen = batches(stream, 10, linger, lambda: True)
        first = await gen.__anext__()
        loop_times.append(loop.time() - start)
        second = await gen.__anext__()
        await gen.aclose()
        return [first, second]

    out = asyncio.run(run())
    assert out == [[1, 2], [3]]
    assert FILL_LINGERS * linger * 0.9 <= loop_times[0] < FILL_LINGERS * linger * 4


def test_the_next_chunk_is_gathered_while_a_batch_is_processed_and_closed_with_the_batches() -> None:
    stream = FakeStream([(0.0, [1]), (0.0, [2]), (0.0, [3])])

    async def run() -> None:
        gen = batches(stream, 10, 0.01, lambda: False)
        assert await gen.__anext__() == [1]
        await asyncio.sleep(0.01)  # "processing": the stream is asked for the next chunk meanwhile
        assert stream.asked == [0, 1]
        await gen.aclose()
        await asyncio.sleep(0)
        assert stream.closed  # the pending take_events was cancelled, its generator finalized

    asyncio.run(run())
