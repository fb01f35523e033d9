"""Recovery of changelogs written in transactions ends at their markers (no broker)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from faust.types import TP

from fmnist_faust.recovery import FencingRecovery, hooks

TP0, TP1 = TP("app-scores-changelog", 0), TP("app-scores-changelog", 1)


def _recovery(offsets: dict[TP, int], highwaters: dict[TP, int]) -> Any:
    recovery = FencingRecovery.__new__(FencingRecovery)  # only the offset bookkeeping is used
    recovery.active_offsets = Counter(offsets)
    recovery.active_highwaters = Counter(highwaters)
    return recovery


def test_a_partition_past_its_highwater_with_every_fetched_record_applied_is_read(monkeypatch: Any) -> None:
    # TP0: records up to 8, its commit marker at 9 = highwater; the consumer is at 10.
    # TP1: same, but record 8 was fetched and not yet applied (still on its way to the table).
    fetched = {TP0: (8, 10), TP1: (8, 10)}
    monkeypatch.setattr(hooks, "delivered", fetched.get)
    recovery = _recovery({TP0: 8, TP1: 7}, {TP0: 9, TP1: 9})
    recovery.skip_trailing_markers()
    assert recovery.active_offsets == {TP0: 9, TP1: 7}
    recovery.active_offsets[TP1] = 8  # the table applied it
    assert recovery.need_recovery() is False


def test_a_partition_whose_position_is_not_past_the_highwater_is_still_read(monkeypatch: Any) -> None:
    monkeypatch.setattr(hooks, "delivered", {TP0: (5, 6)}.get)  # position 6 <= highwater 9: more to come
    recovery = _recovery({TP0: 5, TP1: 2}, {TP0: 9, TP1: 9})  # TP1 not fetched yet
    assert recovery.need_recovery() is True
    assert recovery.active_offsets == {TP0: 5, TP1: 2}
