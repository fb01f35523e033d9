"""Batches for the classify agent: short ones when images trickle in, full ones under a backlog.

Faust's ``take_events(size, within=linger)`` hands over what its stream gathered in one
linger, and the stream gathers only as fast as Faust's per-event path runs (~10,000
events/s here): with the default 10 ms linger, ~100 events, however many wait on the
broker. Every batch pays the same fixed costs (a predict call, a produce request per
partition, a score row and a seen-id mark per partition), so a worker draining a backlog
paid them five times as often as it needed to (``python -m bench.ab``: 0.65x the forward
probe at 10 ms, 0.77x at 50 ms). A longer linger would cost latency when images trickle in.

So :func:`batches` gathers ``take_events`` chunks: a chunk goes out at once unless a
backlog is waiting (``backlog()``: this worker's uncounted images on the broker fill a
batch), then chunks are joined until ``size`` events or ``FILL_LINGERS`` lingers since the
first. The stream gathers the next chunk while the caller processes a batch. Nothing here
decides what is counted: batches may hold events of a revoked partition or an older
generation, or events a rewind will read again, and the agent fences them as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

# Under a backlog a batch waits at most this many lingers to fill (0.1 s by default): a
# backlog of a few hundred images is through in that time anyway.
FILL_LINGERS = 10


async def batches(stream: Any, size: int, linger_s: float, backlog: Callable[[], bool]) -> AsyncIterator[list[Any]]:
    """Lists of at most ``size`` events from ``stream`` (a Faust stream), in order."""
    loop = asyncio.get_running_loop()
    chunks = stream.take_events(size, within=linger_s).__aiter__()
    fill_s = FILL_LINGERS * linger_s
    pending: list[Any] = []
    started = 0.0
    next_chunk: asyncio.Future[list[Any] | None] = asyncio.ensure_future(_next(chunks))
    try:
        while True:
            if pending:
                await asyncio.wait({next_chunk}, timeout=max(0.0, started + fill_s - loop.time()))
                if not next_chunk.done():  # the backlog did not arrive in time: go with what there is
                    batch, pending = pending, []
                    yield batch
                    continue
            events = await next_chunk
            if events is None:  # the stream ended (the agent stops)
                return
            next_chunk = asyncio.ensure_future(_next(chunks))  # gathered while the caller processes
            if not pending:
                started = loop.time()
            pending.extend(events)
            while len(pending) >= size:
                batch, pending = pending[:size], pending[size:]
                started = loop.time()
                yield batch
            if pending and not backlog():
                batch, pending = pending, []
                yield batch
    finally:  # stop gathering and let take_events clean up (it restores the stream's acks)
        next_chunk.cancel()
        await asyncio.wait({next_chunk})
        await chunks.aclose()


async def _next(chunks: AsyncIterator[list[Any]]) -> list[Any] | None:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None
