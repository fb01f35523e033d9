"""The dedupe horizon of the Kafka worker (``seen_ids.SeenIds``), driven by record timestamps:
what stays, what expires, what a replay and a recovery see."""

from __future__ import annotations

from fmnist_faust.seen_ids import SeenIds


def chunk(partition: int, ids: list[str], first: int, timestamp: float) -> tuple[str, dict]:
    offsets = list(range(first, first + len(ids)))
    return f"{partition}@{first}", {"partition": partition, "ids": ids, "offsets": offsets, "timestamp": timestamp}


def test_an_id_is_remembered_within_the_horizon_and_forgotten_after_it() -> None:
    seen = SeenIds(horizon_s=60)
    seen.remember(*chunk(0, ["a", "b"], 10, timestamp=1000.0))
    seen.remember(*chunk(0, ["c"], 12, timestamp=1030.0))
    assert seen.expire(0, 1059.0) == [] and seen.counted_at(0, "a") == 10  # 59 s later: still a duplicate
    assert seen.expire(0, 1061.0) == ["0@10"]  # 61 s later: a and b expire, c (31 s old) stays
    assert seen.counted_at(0, "a") is None and seen.counted_at(0, "b") is None
    assert seen.counted_at(0, "c") == 12 and len(seen) == 1 and seen.chunks() == 1
    assert seen.expire(0, 1000.0) == []  # the watermark never goes back (late records)
    assert seen.expire(0, 1091.0) == ["0@12"] and len(seen) == 0


def test_partitions_expire_by_their_own_records_only() -> None:
    seen = SeenIds(horizon_s=10)
    seen.remember(*chunk(0, ["a"], 0, timestamp=100.0))
    seen.remember(*chunk(1, ["a"], 0, timestamp=100.0))
    assert seen.expire(1, 500.0) == ["1@0"]
    assert seen.counted_at(0, "a") == 0 and seen.counted_at(1, "a") is None  # partition 0 saw nothing new


def test_an_id_counted_again_after_expiry_survives_its_old_chunk() -> None:
    seen = SeenIds(horizon_s=10)
    seen.remember(*chunk(0, ["a", "b"], 0, timestamp=100.0))
    seen.remember(*chunk(0, ["a"], 50, timestamp=105.0))  # re-marked by a newer batch (after a crash)
    assert seen.expire(0, 111.0) == ["0@0"]
    assert seen.counted_at(0, "a") == 50 and seen.counted_at(0, "b") is None


def test_a_replayed_chunk_replaces_the_first_and_a_tombstone_forgets_it() -> None:
    seen = SeenIds(horizon_s=10)
    seen.remember(*chunk(0, ["a", "b"], 5, timestamp=100.0))
    seen.remember(*chunk(0, ["a"], 5, timestamp=100.0))  # the batch replayed with fewer images
    assert seen.counted_at(0, "b") is None and seen.chunks() == 1
    seen.forget("0@5")  # the tombstone, as recovery applies it
    assert len(seen) == 0 and seen.chunks() == 0


def test_memory_stays_at_one_horizon_of_ids_however_long_the_stream() -> None:
    seen = SeenIds(horizon_s=60)
    sizes = []
    for second in range(0, 3600, 1):  # an hour at 100 images/s, one chunk per second
        seen.expire(0, float(second))
        seen.remember(*chunk(0, [f"id-{second}-{n}" for n in range(100)], second * 100, timestamp=float(second)))
        sizes.append(len(seen))
    assert max(sizes) == sizes[-1] == 61 * 100  # the horizon (60 s) plus the current second
