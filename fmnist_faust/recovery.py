"""Table recovery that fences first and knows transaction markers (``exactly_once`` only).

Two things Faust's own recovery does not do when the changelogs are written in
transactions by our producers rather than by Faust's ``processing_guarantee``:

- **Fence before reading.** A worker must own every transactional id of its images
  partitions (:mod:`.transactions`) before it reads their changelogs, or a previous owner
  could commit a row after the read and the new owner would count that batch again.
  :meth:`FencingRecovery.on_rebalance` awaits :data:`before_recovery` (the producers'
  ``fence``) and only then lets Faust build the highwaters and read.
- **End at the markers.** A transaction ends with a commit (or abort) marker, which takes
  an offset but never reaches the table, so the last offset of a partition is a marker and
  Faust's "read up to highwater - 1" never finishes (it has a workaround only for its own
  transactions). A partition counts as read (:meth:`FencingRecovery.need_recovery`) once a
  fetch left the consumer's position past the highwater and the table has applied the last
  record fetched before that (:meth:`.offsets.RowOffsetConsumer.delivered`): what is left
  are markers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP

#: Awaited with the assigned partitions before each recovery starts (set by :mod:`.transactions`).
BeforeRecovery = Callable[[set[TP]], Awaitable[None]]


class _Hooks:
    before_recovery: BeforeRecovery | None = None
    # tp -> (last record offset fetched, consumer position after that fetch), or None
    delivered: Callable[[TP], tuple[int, int] | None] | None = None


hooks = _Hooks()


class FencingRecovery(Recovery):
    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
    ) -> None:
        if hooks.before_recovery is not None and generation_id == self.app.consumer_generation_id:
            await hooks.before_recovery(assigned)
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    def need_recovery(self) -> bool:
        self.skip_trailing_markers()
        return bool(super().need_recovery())

    def skip_trailing_markers(self) -> None:
        """Mark as read each active partition whose records stop short of the highwater while
        the consumer is already past it and every record fetched was applied (what is left
        are transaction markers)."""
        delivered = hooks.delivered
        if delivered is None:
            return
        offsets, highwaters = self.active_offsets, self.active_highwaters
        for tp, highwater in list(highwaters.items()):
            applied = offsets.get(tp)
            if highwater is None or highwater < 0 or applied is None or applied >= highwater:
                continue
            fetched = delivered(tp)
            if fetched is not None and fetched[1] > highwater and applied >= fetched[0]:
                offsets[tp] = highwater


class FencingTableManager(TableManager):
    @property
    def recovery(self) -> Any:
        current: Recovery | None = self._recovery  # type: ignore[has-type]
        if current is None:
            current = self._recovery = FencingRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return current
