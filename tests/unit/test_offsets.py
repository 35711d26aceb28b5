"""The per-partition commit watermark."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.offsets import PartitionWatermark


def test_position_when_nothing_is_held() -> None:
    wm = PartitionWatermark(10)
    assert wm.committable() == 10
    wm.consumed(10)
    wm.consumed(11)
    assert wm.committable() == 12


def test_lowest_hold_wins_and_release_advances() -> None:
    wm = PartitionWatermark(0)
    for offset in range(10):
        wm.consumed(offset)
    wm.hold("a", 3)
    wm.hold("b", 5)
    assert wm.committable() == 3
    wm.release("a")
    assert wm.committable() == 5
    wm.hold("b", 8)  # a session moves its resume point forward
    assert wm.committable() == 8
    wm.release("b")
    wm.release("unknown")
    assert wm.committable() == 10 and wm.holds == 0


def test_out_of_order_consumption_never_moves_back() -> None:
    wm = PartitionWatermark(0)
    wm.consumed(5)
    wm.consumed(2)
    assert wm.position == 6


@given(st.lists(st.tuples(st.sampled_from(["hold", "release", "consume"]), st.integers(0, 9)), max_size=60))
def test_never_commits_past_a_held_offset_or_the_position(ops: list[tuple[str, int]]) -> None:
    wm = PartitionWatermark(0)
    next_offset = 0
    holds: dict[int, int] = {}
    for op, key in ops:
        if op == "consume":
            wm.consumed(next_offset)
            next_offset += 1
        elif op == "hold" and next_offset:
            offset = next_offset - 1
            wm.hold(key, offset)
            holds[key] = offset
        else:
            wm.release(key)
            holds.pop(key, None)
        committable = wm.committable()
        assert committable <= next_offset
        assert all(committable <= offset for offset in holds.values())
        assert committable == min([*holds.values(), next_offset])
