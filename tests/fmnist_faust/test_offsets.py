"""Where the worker commits and resumes (``offsets``, ``tables.next_offset``), which events
a batch may count (``agents._owned``, ``agents._without_gaps``) and which score row wins
recovery (``tables.ScoresTable``): the exactness rules, without a broker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from faust.types import TP

from fmnist_faust.core.pipeline import RawMessage
from fmnist_faust.core.scores import Scores
from fmnist_faust.fetches import Fetch


@dataclass
class _Message:
    tp: TP
    offset: int
    generation_id: int = 0

    @property
    def partition(self) -> int:
        return self.tp.partition


@dataclass
class _Event:
    message: _Message
    key: Any = None
    value: Any = None


def _images(partition: int) -> TP:
    from fmnist_faust.topics import images_topic

    return TP(images_topic.get_topic_name(), partition)


def _labels(partition: int) -> TP:
    from fmnist_faust.topics import labels_topic

    return TP(labels_topic.get_topic_name(), partition)


def test_next_offset_is_the_row_offset_plus_one_for_images_and_labels_partitions_only() -> None:
    from fmnist_faust import tables

    tables.scores_table.data.clear()
    assert tables.next_offset(_images(2)) == 0  # nothing counted yet: from the start
    assert tables.next_offset(_labels(2)) == 0
    tables.scores_table.data["2"] = {"offset": 41, "model_version": "v", "scores": Scores().to_dict()}
    assert tables.next_offset(_images(2)) == 42
    assert tables.next_offset(_labels(2)) == 0  # a row written before the labels stream
    tables.scores_table.data["2"]["labels_offset"] = 7
    assert tables.next_offset(_labels(2)) == 8
    assert tables.next_offset(TP("some-other-topic", 2)) is None
    tables.scores_table.data.clear()


def test_recovery_keeps_the_row_with_the_highest_offset() -> None:
    from fmnist_faust import tables

    tables.scores_table.data.clear()

    def row(offset: int) -> dict[str, Any]:
        scores = Scores()
        scores.record([1] * offset, [1] * offset, [0.0] * offset, 10)
        return {"offset": offset, "model_version": "v", "scores": scores.to_dict()}

    # the owner wrote 5 then 9; a zombie appended its older row 7 afterwards
    events = [_Event(_Message(TP("x", 0), i), key="0", value=row(o)) for i, o in enumerate((5, 9, 7))]
    tables.scores_table.apply_changelog_batch(events)
    offset, scores = tables.read_row(0)
    assert offset == 9 and scores.images == 9
    tables.scores_table.apply_changelog_batch([_Event(_Message(TP("x", 0), 3), key="0", value=None)])
    assert tables.read_row(0)[0] == -1  # a tombstone still deletes
    tables.scores_table.data.clear()


def test_rows_rank_by_clock_then_offsets() -> None:
    """With labels a row can move on labels alone: the one with the newest clock wins, then the
    offsets; a row written before the labels stream ranks by its offset, as before."""
    from fmnist_faust import tables

    old = {"offset": 9, "model_version": "v", "scores": Scores().to_dict()}
    rows = [
        dict(old, labels_offset=3, clock=50.0),
        dict(old, offset=12, labels_offset=3, clock=40.0),  # a zombie's: more images, older clock
        dict(old, labels_offset=5, clock=50.0),
    ]
    assert max(rows, key=tables.row_rank) is rows[2]
    assert tables.row_rank(old) < tables.row_rank(dict(old, offset=10)) < tables.row_rank(rows[1])


def _fetch(tp: TP, offsets: list[int], generation: int = 0) -> Fetch:
    return Fetch(tp, generation, offsets, [RawMessage(b"v%d" % o) for o in offsets])


def test_fetches_of_an_older_generation_are_not_counted(monkeypatch: Any) -> None:
    from fmnist_faust import agents

    monkeypatch.setattr(agents, "_assigned", lambda: {_images(0), _images(1)})
    fetches = [_fetch(_images(0), [1], 3), _fetch(_images(0), [2], 4), _fetch(_images(2), [3], 4)]
    assert agents._owned(fetches, 4) == [fetches[1]]  # partition 2 is no longer ours


def test_a_batch_counts_each_partition_up_to_its_first_hole(monkeypatch: Any) -> None:
    from fmnist_faust import agents

    monkeypatch.setattr(agents, "gap_guard", agents.GapGuard())
    fetches = [_fetch(_images(0), [10, 11, 13]), _fetch(_images(1), [5, 6]), _fetch(_labels(0), [3, 5])]
    kept, labels, cut = agents._uncounted(fetches, {_images(0): 9, _images(1): 4, _labels(0): 2})
    assert list(zip(kept.partitions, kept.offsets)) == [(0, 10), (0, 11), (1, 5), (1, 6)]
    assert kept.last_offsets == {0: 11, 1: 6}
    assert kept.messages[0] == RawMessage(b"v10") and cut == {_images(0), _labels(0)}
    assert (labels.partitions, labels.offsets, labels.last_offsets) == ([0], [3], {0: 3})  # each topic its own holes


def test_records_read_again_after_a_rewind_count_once_in_offset_order(monkeypatch: Any) -> None:
    """Records fetched before a rewind and the same offsets fetched again can share a batch."""
    from fmnist_faust import agents

    monkeypatch.setattr(agents, "gap_guard", agents.GapGuard())
    fetches = [_fetch(_images(0), [12, 13, 14]), _fetch(_images(0), [10, 11, 12, 13])]
    kept, _, cut = agents._uncounted(fetches, {_images(0): 10})  # 10 is counted already
    assert kept.offsets == [11, 12, 13, 14] and kept.messages == [RawMessage(b"v%d" % o) for o in (11, 12, 13, 14)]
    assert cut == set()


def test_seek_runs_on_the_consumer_thread() -> None:
    """aiokafka's seek and its fetcher share a buffer: the seek must go through the consumer
    thread's method queue (``call_thread``), never run directly on the event loop's thread."""
    import asyncio

    from fmnist_faust.offsets import RowOffsetConsumer

    calls: list[tuple[str, TP, int]] = []

    class _Thread:
        def seek(self, partition: TP, offset: int) -> None:
            calls.append(("seek", partition, offset))

        async def call_thread(self, fun: Any, *args: Any) -> Any:
            calls.append(("call_thread", *args))
            return fun(*args)

    class _Consumer:
        _thread = _Thread()
        _delivered: dict[TP, tuple[int, int]] = {}

    tp = _images(1)
    asyncio.run(RowOffsetConsumer._seek(_Consumer(), tp, 42))  # type: ignore[arg-type]
    assert calls == [("call_thread", tp, 42), ("seek", tp, 42)]


def _sent(tp: TP, offsets: list[int]) -> Any:
    from fmnist_faust.agents import Sent, Uncounted
    from fmnist_faust.core.pipeline import BatchResult

    uncounted = Uncounted(
        [tp.partition] * len(offsets), offsets, [RawMessage(b"") for _ in offsets], {tp.partition: offsets[-1]}
    )
    empty = BatchResult([], [], [])
    return Sent(0, uncounted, empty, [], set(), empty, None, "v", [])


def test_a_batch_built_on_a_failed_batch_in_flight_is_read_again_not_counted(monkeypatch: Any) -> None:
    """The batch in flight reads as counted for the next one; when it fails, the next one
    is not started (not counted) and its partitions are read again."""
    import asyncio

    from fmnist_faust import agents

    rewound: list[set[TP]] = []
    finished: list[list[int]] = []
    seen_applied: list[int] = []
    outcomes = iter([False, True])  # the first batch's acks fail

    async def finish(sent: Any) -> bool:
        finished.append(sent.uncounted.offsets)
        return next(outcomes)

    async def send(uncounted: Any, labels: Any, applied: dict[TP, int], generation: int, flight: Any) -> Any:
        seen_applied.append(applied[_images(0)])
        return _sent(_images(0), uncounted.offsets)

    async def record_rewind(tps: Any, why: str) -> None:
        rewound.append(set(tps))

    monkeypatch.setattr(agents, "_finish", finish)
    monkeypatch.setattr(agents, "_send", send)
    monkeypatch.setattr(agents, "rewind", record_rewind)
    monkeypatch.setattr(agents, "_row_offset_of", lambda tp: 9)
    monkeypatch.setattr(agents, "_assigned", lambda: None)
    monkeypatch.setattr(agents, "gap_guard", agents.GapGuard())
    monkeypatch.setattr(type(agents.app), "consumer_generation_id", 0, raising=False)

    async def run() -> list[bool]:
        flight = agents.InFlight()
        first = await agents.process_fetches([_fetch(_images(0), [10, 11, 12])], flight)
        second = await agents.process_fetches([_fetch(_images(0), [13, 14])], flight)
        third = await agents.process_fetches([_fetch(_images(0), [10, 11, 12])], flight)  # read again
        await flight.settle()
        return [first, second, third]

    assert asyncio.run(run()) == [True, False, True]
    assert seen_applied == [9, 12, 9]  # the second batch read the first (in flight) as counted
    assert finished == [[10, 11, 12], [10, 11, 12]]  # the batch at 13 was never started
    assert rewound == [{_images(0)}]


def test_events_the_flow_control_clears_are_read_again_even_when_flow_was_running(monkeypatch: Any) -> None:
    """Faust's recovery resumes flow twice; the second resume cleared a fetch already queued
    for the agent, whose partition then counted nothing until the stall check."""
    import asyncio

    from mode.utils.queues import FlowControlQueue

    from fmnist_faust import offsets
    from fmnist_faust.faust_app import app

    assert isinstance(app.flow_control, offsets.ReadAgainOnClear)
    read_again: list[set[TP]] = []

    async def record(tps: set[TP]) -> None:
        read_again.append(tps)

    monkeypatch.setattr(offsets.ReadAgainOnClear, "read_again", staticmethod(record))

    async def scenario() -> None:
        flow = offsets.ReadAgainOnClear(initially_suspended=False)
        queue: FlowControlQueue = FlowControlQueue(maxsize=16, flow_control=flow, clear_on_resume=True)
        flow.resume()  # nothing queued: nothing to read again
        await asyncio.sleep(0)
        assert read_again == []
        for tp in (_images(2), _images(2), _images(0)):
            queue.put_nowait(_Event(_Message(tp, 7)))
        queue.put_nowait("not an event")
        flow.resume()  # flow was running: Faust clears the queue all the same
        assert queue.empty()
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert read_again == [{_images(2), _images(0)}]


def test_the_agent_reads_cleared_partitions_again_from_their_rows(monkeypatch: Any) -> None:
    import asyncio

    from fmnist_faust import agents, offsets

    rewound: list[tuple[TP, str]] = []

    class Consumer:
        def assignment(self) -> set[TP]:
            return {_images(0), _images(1)}

        async def rewind(self, tp: TP, why: str) -> None:
            rewound.append((tp, why))

    monkeypatch.setattr(agents.app, "_consumer", Consumer(), raising=False)
    monkeypatch.setattr(type(agents.app), "consumer", property(lambda app: app._consumer))
    read_again = offsets.ReadAgainOnClear.read_again
    assert read_again is not None
    asyncio.run(read_again({_images(1), _images(3)}))  # 3 is no longer assigned here
    assert rewound == [(_images(1), "Faust cleared its fetched records from the stream's queue")]
