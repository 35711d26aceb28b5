"""The commit cadence: each owned partition commits once per interval, the partitions spread over it."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.cadence import CommitCadence

INTERVAL = 0.2


def run(cadence: CommitCadence, owned: set[int], start: float, end: float) -> dict[int, list[float]]:
    """Drive the cadence as the worker's loop does, with instant commits: wake, commit what is due, sleep."""
    starts: dict[int, list[float]] = {p: [] for p in owned}
    now = start
    while now < end:
        for partition in cadence.due(now, owned):
            starts[partition].append(now)
        now = cadence.next_wake(now)
    return starts


def test_partitions_assigned_together_commit_spread_over_the_interval() -> None:
    cadence = CommitCadence(INTERVAL)
    starts = run(cadence, set(range(6)), 0.0, 1.0)
    firsts = sorted(times[0] for times in starts.values())
    assert firsts == pytest.approx([INTERVAL * k / 6 for k in range(1, 7)])
    every = sorted(t for times in starts.values() for t in times)
    gaps = [b - a for a, b in itertools.pairwise(every)]
    assert min(gaps) == pytest.approx(INTERVAL / 6)


def test_a_busy_partition_is_not_committed_again_and_is_due_at_once_when_it_ends() -> None:
    cadence = CommitCadence(INTERVAL)
    assert cadence.due(0.0, {1}) == []
    assert cadence.due(0.2, {1}) == [1]
    assert cadence.due(0.4, {1}, busy={1}) == []  # its commit took longer than an interval
    assert cadence.next_wake(0.4, busy={1}) == pytest.approx(0.6)  # nothing else: one interval on
    assert cadence.due(0.55, {1}) == [1]  # ended: at once
    assert cadence.due(0.6, {1}) == []
    assert cadence.due(0.75, {1}) == [1]  # the cadence from the late commit's start


def test_a_partition_let_go_is_forgotten_and_one_owned_again_is_new() -> None:
    cadence = CommitCadence(INTERVAL)
    cadence.due(0.0, {1, 2})
    assert cadence.due(0.2, {2}) == [2]
    assert cadence.next_wake(0.2) == pytest.approx(0.4)
    assert cadence.due(0.3, {1, 2}) == []  # 1 is new again: due one interval on
    assert cadence.due(0.4, {1, 2}) == [2]
    assert cadence.due(0.5, {1, 2}) == [1]


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        CommitCadence(0)


@settings(max_examples=200, deadline=None)
@given(
    first=st.sets(st.integers(0, 11), min_size=1),
    second=st.sets(st.integers(0, 11), min_size=1),
    change_at=st.floats(0.0, 2.0),
)
def test_every_owned_partition_commits_once_per_interval(first: set[int], second: set[int], change_at: float) -> None:
    """Through a change of assignment: commits of one partition are never closer than an interval,
    never further apart than one, and a newly owned partition commits within an interval of it."""
    cadence = CommitCadence(INTERVAL)
    starts = run(cadence, first, 0.0, change_at)
    later = run(cadence, second, change_at, change_at + 2.0)
    for partition, times in later.items():
        every = starts.get(partition, []) + times  # starts: the partitions of the first assignment
        gaps = [b - a for a, b in itertools.pairwise(every)]
        assert all(INTERVAL - 1e-9 <= g <= INTERVAL + 1e-9 for g in gaps), (partition, every)
        known_since = 0.0 if partition in first else change_at
        assert every and every[0] - known_since <= INTERVAL + 1e-9
