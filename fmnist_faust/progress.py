"""Which assigned partitions have images waiting but count none: a stalled worker is never silent."""

from __future__ import annotations

import time
from collections.abc import Callable


class Progress:
    """When each partition last counted an image (or had nothing waiting).

    A partition is stalled when images wait on it (lag > 0) and none was counted for longer
    than ``bound_s``. :meth:`check` returns the partitions that just crossed the bound, and
    again every ``bound_s`` while they stay stalled, so the caller can log and act on each.
    """

    def __init__(self, bound_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.bound_s = bound_s
        self._clock = clock
        self._since: dict[int, float] = {}
        self.stalled: set[int] = set()

    def advanced(self, partition: int) -> None:
        self._since[partition] = self._clock()
        self.stalled.discard(partition)

    def check(self, lags: dict[int, int]) -> list[int]:
        """``lags``: assigned partition -> images waiting. Returns the partitions due for action."""
        now = self._clock()
        for partition in set(self._since) - set(lags):
            del self._since[partition]
            self.stalled.discard(partition)
        due = []
        for partition, lag in sorted(lags.items()):
            since = self._since.setdefault(partition, now)
            if lag <= 0:
                self._since[partition] = now
                self.stalled.discard(partition)
            elif now - since > self.bound_s:
                self.stalled.add(partition)
                self._since[partition] = now  # act again after another bound if still stalled
                due.append(partition)
        return due
