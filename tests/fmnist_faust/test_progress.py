"""Stall detection (``progress.Progress``) and the hole guard of the agent (``agents.GapGuard``),
driven by an injected clock and plain offsets (no broker)."""

from __future__ import annotations

from fmnist_faust.progress import Progress


def test_partition_with_waiting_images_and_no_progress_is_due_once_per_bound() -> None:
    now = [0.0]
    progress = Progress(bound_s=60, clock=lambda: now[0])
    assert progress.check({0: 5, 1: 0}) == []
    now[0] = 59
    assert progress.check({0: 5, 1: 0}) == [] and progress.stalled == set()
    now[0] = 61
    assert progress.check({0: 5, 1: 0}) == [0] and progress.stalled == {0}
    now[0] = 90
    assert progress.check({0: 5, 1: 0}) == []  # acted on at 61: next time after another bound
    now[0] = 122
    assert progress.check({0: 5, 1: 0}) == [0]
    progress.advanced(0)
    assert progress.stalled == set()
    now[0] = 150
    assert progress.check({0: 5, 1: 0}) == []


def test_progress_or_empty_backlog_resets_the_clock_and_revoked_partitions_are_forgotten() -> None:
    now = [0.0]
    progress = Progress(bound_s=10, clock=lambda: now[0])
    progress.check({2: 3})
    now[0] = 8
    progress.advanced(2)
    now[0] = 17
    assert progress.check({2: 3}) == []  # counted at 8: only 9 s without progress
    now[0] = 30
    assert progress.check({2: 0}) == []  # nothing waiting is not a stall
    now[0] = 50
    assert progress.check({2: 0, 3: 1}) == []
    now[0] = 61
    assert progress.check({2: 4, 3: 1}) == [2, 3]  # both waited since 50 without a count
    assert progress.check({}) == [] and progress.stalled == set()  # partitions revoked


def test_gap_guard_cuts_at_a_hole_then_accepts_it_when_the_re_read_shows_it_again() -> None:
    from faust.types import TP

    from fmnist_faust.agents import GapGuard

    guard = GapGuard()
    zero, one, labels_zero = TP("images", 0), TP("images", 1), TP("labels", 0)
    assert guard.contiguous(zero, 9, [10, 11, 12]) == 3
    assert guard.contiguous(zero, 12, [13, 14, 17, 18]) == 2  # 15..16 never received: re-read from 15
    assert guard.contiguous(labels_zero, 14, [17, 18]) == 0  # another topic's partition 0: its own hole
    assert guard.contiguous(zero, 14, [17, 18]) == 2  # the re-read starts at 17 again: no records there
    assert guard.contiguous(one, -1, [5, 6]) == 0  # a partition that starts past its first offset
    assert guard.contiguous(one, -1, [0, 1, 2]) == 3  # the re-read found 0..4 after all
    assert guard.contiguous(one, 2, [5, 6]) == 0  # a different hole is cut again
