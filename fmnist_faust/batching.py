"""Batches for the classify agent: whatever has been fetched, never a wait for more.

Each event of the images stream is a whole fetch of one partition (:mod:`.fetches`). A
batch is the fetches queued in the stream's buffer when the agent is ready for the next
one, up to ``size`` records: when images trickle in, a batch is the one fetch that just
came (its latency is the fetch and the batch's own work, never a linger); under a
backlog, the fetches that arrived while the previous batch was processed, so batches fill
by themselves at the rate the agent can take them. Nothing here decides what is counted:
batches may hold records of a revoked partition or an older generation, or records a
rewind will read again, and the agent fences them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from .fetches import Fetch, fetch_of


async def batches(events: AsyncIterator[Any], size: int, queued: Callable[[], bool]) -> AsyncIterator[list[Fetch]]:
    """Lists of fetches of at most ``size`` records in all, in order, from ``events`` (a Faust
    stream's events); ``queued()`` tells whether another event is already waiting."""
    pending: list[Fetch] = []
    records = 0
    async for event in events:
        fetch = fetch_of(event)
        while records + len(fetch.offsets) > size:  # cut at ``size``; the rest starts the next batch
            room = size - records
            pending.append(fetch.cut(0, room))
            yield pending
            pending, records, fetch = [], 0, fetch.cut(room)
        if fetch.offsets:
            pending.append(fetch)
            records += len(fetch.offsets)
        if pending and (records >= size or not queued()):
            yield pending
            pending, records = [], 0
