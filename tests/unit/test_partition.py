"""The input partition as an explicit state machine (pipeline.partition)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pipeline.errors import IllegalTransition
from pipeline.partition import ALLOWED, FlowAction, FlowLimits, Partition, PartitionState

S = PartitionState
LIMITS = FlowLimits(
    fetch_silence_ms=250.0, recovery_grace_s=5.0, lag_threshold=20, pause_high_bytes=1000, pause_low_bytes=200
)
QUIET = 10.0  # ms since the last fetch answer: well inside fetch_silence_ms
SILENT = 1000.0  # well beyond it
FLOWING = {S.ASSIGNED, S.LIVE, S.LAGGING, S.CATCHING_UP, S.RECOVERING, S.DISCONNECTED, S.PAUSED}


def live_partition(now: float = 0.0) -> Partition:
    p = Partition(3, LIMITS, now)
    p.fetch_answered(now, QUIET)
    assert p.state is S.LIVE
    return p


# -- every state is reachable ---------------------------------------------------------------------


def test_a_new_partition_is_assigned_and_not_live() -> None:
    p = Partition(0, LIMITS, 0.0)
    assert p.state is S.ASSIGNED
    assert not p.live
    assert p.owned
    assert p.number == 0


def test_first_answered_fetch_makes_it_live() -> None:
    p = Partition(0, LIMITS, 0.0)
    p.fetch_answered(0.1, QUIET)
    assert p.state is S.LIVE and p.live


def test_first_fetched_records_make_it_live() -> None:
    p = Partition(0, LIMITS, 0.0)
    p.records_fetched(0.1)
    assert p.state is S.LIVE and p.live


def test_lagging_and_back() -> None:
    p = live_partition()
    p.observe_lag(LIMITS.lag_threshold)
    assert p.state is S.LIVE
    p.observe_lag(LIMITS.lag_threshold + 1)
    assert p.state is S.LAGGING and not p.live
    p.observe_lag(None)
    assert p.state is S.LIVE


def test_catching_up_until_position_reaches_target() -> None:
    p = live_partition()
    p.catch_up(100)
    assert p.state is S.CATCHING_UP and not p.live
    assert p.catch_up_to == 100
    p.position_reached(99)
    assert p.state is S.CATCHING_UP
    p.position_reached(100)
    assert p.state is S.LIVE
    assert p.catch_up_to is None


def test_catch_up_keeps_the_highest_target() -> None:
    p = live_partition()
    p.catch_up(100)
    p.catch_up(50)
    assert p.catch_up_to == 100
    p.position_reached(60)
    assert p.state is S.CATCHING_UP
    p.catch_up(120)
    p.position_reached(110)
    assert p.state is S.CATCHING_UP
    p.position_reached(120)
    assert p.live


def test_disconnected_by_the_consumer() -> None:
    p = live_partition()
    p.disconnected()
    assert p.state is S.DISCONNECTED and not p.live


def test_disconnected_by_a_lost_connection_flag() -> None:
    p = live_partition()
    p.fetch_answered(1.0, QUIET, connected=False)
    assert p.state is S.DISCONNECTED


def test_paused_and_resumed() -> None:
    p = live_partition()
    assert p.observe_queued(LIMITS.pause_high_bytes + 1) is FlowAction.PAUSE
    assert p.state is S.PAUSED and p.paused and not p.live
    assert p.observe_queued(LIMITS.pause_low_bytes - 1) is FlowAction.RESUME
    assert p.state is S.LIVE and not p.paused


def test_revoking_then_released() -> None:
    p = live_partition()
    p.revoke(1.0)
    assert p.state is S.REVOKING and not p.live and not p.owned
    p.release()
    assert p.state is S.RELEASED and not p.live and not p.owned


def test_released_while_owned() -> None:
    p = live_partition()
    p.release()
    assert p.state is S.RELEASED


def test_every_state_is_reachable() -> None:
    seen: set[PartitionState] = set()
    paths: list[Callable[[Partition], None]] = [
        lambda p: None,
        lambda p: p.fetch_answered(0.0, QUIET),
        lambda p: (p.fetch_answered(0.0, QUIET), p.observe_lag(1000)),
        lambda p: (p.fetch_answered(0.0, QUIET), p.catch_up(10)),
        lambda p: (p.fetch_answered(0.0, QUIET), p.disconnected(), p.fetch_answered(1.0, QUIET)),
        lambda p: p.disconnected(),
        lambda p: p.observe_queued(10**6),
        lambda p: p.revoke(0.0),
        lambda p: p.release(),
    ]
    for path in paths:
        p = Partition(0, LIMITS, 0.0)
        path(p)
        seen.add(p.state)
    assert seen == set(PartitionState)


# -- the broker-outage story ----------------------------------------------------------------------


def outage(now: float) -> Partition:
    """Answered, then silent beyond fetch_silence_ms, then answering again at ``now``."""
    p = live_partition(0.0)
    p.fetch_answered(now - 2.0, LIMITS.fetch_silence_ms)  # exactly at the limit: still up
    assert p.state is S.LIVE
    p.fetch_answered(now - 1.0, LIMITS.fetch_silence_ms + 1)
    assert p.state is S.DISCONNECTED and not p.live
    p.fetch_answered(now, QUIET)
    assert p.state is S.RECOVERING and not p.live
    return p


def test_outage_recovering_until_grace_passes() -> None:
    p = outage(10.0)
    p.fetch_answered(10.0 + LIMITS.recovery_grace_s - 0.01, QUIET)
    assert p.state is S.RECOVERING and not p.live
    p.fetch_answered(10.0 + LIMITS.recovery_grace_s, QUIET)
    assert p.state is S.LIVE and p.live


def test_outage_records_do_not_end_recovery() -> None:
    """Records right after an outage may predate it, or be one producer's backlog while others are still
    reconnecting: only the grace ends a recovery (a broker-restart scenario cut words otherwise)."""
    p = outage(10.0)
    p.fetch_answered(10.5, QUIET)
    assert p.state is S.RECOVERING
    p.records_fetched(10.6)
    assert p.state is S.RECOVERING and not p.live


def test_outage_lag_alone_does_not_end_recovery() -> None:
    p = outage(10.0)
    p.observe_lag(0)
    p.position_reached(1_000)
    assert p.state is S.RECOVERING


def test_silence_during_recovery_restarts_the_grace() -> None:
    p = outage(10.0)
    p.fetch_answered(12.0, SILENT)
    assert p.state is S.DISCONNECTED
    p.fetch_answered(14.0, QUIET)
    assert p.state is S.RECOVERING
    p.fetch_answered(10.0 + LIMITS.recovery_grace_s, QUIET)  # grace counted from 10.0 would have passed
    assert p.state is S.RECOVERING
    p.fetch_answered(14.0 + LIMITS.recovery_grace_s, QUIET)
    assert p.live


def test_records_do_not_end_an_outage_that_is_still_silent() -> None:
    p = live_partition()
    p.disconnected()
    p.fetch_answered(1.0, SILENT)
    assert p.state is S.DISCONNECTED


# -- keep / revoke / release ----------------------------------------------------------------------


@pytest.mark.parametrize("state", sorted(FLOWING, key=lambda s: s.value))
def test_keep_is_illegal_unless_revoking(state: PartitionState) -> None:
    p = drive_to(state)
    with pytest.raises(IllegalTransition):
        p.keep(10)
    assert p.state is state


def test_keep_catches_up_to_the_position_and_forgets_the_pause() -> None:
    p = live_partition()
    assert p.observe_queued(10**6) is FlowAction.PAUSE
    p.revoke(1.0)
    assert p.state is S.REVOKING
    p.keep(100)
    assert p.state is S.CATCHING_UP and not p.live
    assert not p.paused
    assert p.catch_up_to == 100
    assert p.owned


def test_catch_up_after_keep_needs_a_fetch_answered_since() -> None:
    p = live_partition()
    p.revoke(1.0)
    p.keep(100)
    p.position_reached(150)  # the consumer's stale pre-rebalance position
    assert p.state is S.CATCHING_UP
    p.fetch_answered(2.0, QUIET)
    assert p.state is S.CATCHING_UP
    p.position_reached(60)  # reset to the committed offset
    assert p.state is S.CATCHING_UP
    p.records_fetched(2.1)
    assert p.state is S.CATCHING_UP
    p.position_reached(100)
    assert p.state is S.LIVE


def test_catch_up_after_keep_records_count_as_an_answered_fetch() -> None:
    p = live_partition()
    p.revoke(1.0)
    p.keep(100)
    p.records_fetched(2.0)
    p.position_reached(100)
    assert p.live


def test_catch_up_after_keep_is_not_ended_by_a_disconnect() -> None:
    """A lost connection is not an answered fetch: a stale position must not end the catch-up."""
    p = live_partition()
    p.revoke(1.0)
    p.keep(100)
    p.disconnected()
    p.position_reached(150)  # stale pre-rebalance position; no fetch has answered since keep
    p.fetch_answered(2.0, QUIET)
    p.position_reached(60)  # the real position, reset to the committed offset
    p.records_fetched(2.1)
    assert p.state is S.CATCHING_UP
    assert not p.live


def test_catch_up_after_keep_is_not_ended_by_a_silent_fetch() -> None:
    p = live_partition()
    p.revoke(1.0)
    p.keep(100)
    p.fetch_answered(2.0, SILENT)
    p.position_reached(150)
    p.fetch_answered(3.0, QUIET)
    p.position_reached(60)
    p.records_fetched(3.1)
    assert not p.live


def test_revoking_is_frozen_and_ignores_observations() -> None:
    p = live_partition()
    p.revoke(1.0)
    p.fetch_answered(2.0, SILENT)
    p.disconnected()
    p.records_fetched(2.0)
    p.observe_lag(10**6)
    p.position_reached(10)
    assert p.state is S.REVOKING


@pytest.mark.parametrize("event", ["observe_queued", "catch_up"])
def test_revoking_refuses_flow_events(event: str) -> None:
    p = live_partition()
    p.revoke(1.0)
    with pytest.raises(IllegalTransition):
        getattr(p, event)(10)
    assert p.state is S.REVOKING


def test_revoke_twice_is_illegal() -> None:
    """REVOKING → REVOKING is not in ALLOWED: a second revoke without an assignment in between is a bug."""
    p = live_partition()
    p.revoke(1.0)
    with pytest.raises(IllegalTransition):
        p.revoke(2.0)


def released() -> Partition:
    p = live_partition()
    p.revoke(1.0)
    p.release()
    return p


ALL_EVENTS: dict[str, Callable[[Partition], object]] = {
    "fetch_answered": lambda p: p.fetch_answered(5.0, QUIET),
    "disconnected": lambda p: p.disconnected(),
    "records_fetched": lambda p: p.records_fetched(5.0),
    "observe_lag": lambda p: p.observe_lag(0),
    "observe_queued": lambda p: p.observe_queued(0),
    "catch_up": lambda p: p.catch_up(10),
    "position_reached": lambda p: p.position_reached(10),
    "revoke": lambda p: p.revoke(5.0),
    "keep": lambda p: p.keep(10),
    "release": lambda p: p.release(),
}


@pytest.mark.parametrize("event", sorted(ALL_EVENTS))
def test_after_released_every_event_raises(event: str) -> None:
    p = released()
    with pytest.raises(IllegalTransition):
        ALL_EVENTS[event](p)
    assert p.state is S.RELEASED


def test_illegal_transition_names_machine_state_and_event() -> None:
    p = released()
    with pytest.raises(IllegalTransition) as raised:
        p.keep(1)
    assert raised.value.machine == "partition"
    assert raised.value.state == "released"
    assert "keep" in raised.value.event


# -- pause / resume hysteresis --------------------------------------------------------------------


def test_pause_and_resume_once_per_crossing() -> None:
    p = live_partition()
    high, low = LIMITS.pause_high_bytes, LIMITS.pause_low_bytes
    actions = [p.observe_queued(q) for q in (0, high, high + 1, high + 500, low, (high + low) // 2, low - 1, 0)]
    assert actions == [
        FlowAction.NONE,
        FlowAction.NONE,  # at the high mark: not above it
        FlowAction.PAUSE,
        FlowAction.NONE,
        FlowAction.NONE,  # at the low mark: not below it
        FlowAction.NONE,
        FlowAction.RESUME,
        FlowAction.NONE,
    ]
    assert p.observe_queued(high + 1) is FlowAction.PAUSE
    assert p.observe_queued(high + 1) is FlowAction.NONE


def test_paused_wins_over_every_other_condition() -> None:
    p = live_partition()
    p.observe_queued(10**6)
    p.disconnected()
    p.catch_up(10)
    p.observe_lag(10**6)
    assert p.state is S.PAUSED
    p.observe_queued(0)
    assert p.state is S.DISCONNECTED


# -- random worker-like event sequences -----------------------------------------------------------


@dataclass
class Model:
    """What the docs say the partition must conclude from the events it saw."""

    link: str = "unknown"  # unknown | up | down | recovering
    recovering_since: float = 0.0
    answered: bool = False  # a fetch answered (or returned records) since assignment / keep
    lagging: bool = False
    paused: bool = False
    catch_up: int | None = None
    frozen: bool = False
    released: bool = False
    history: list[tuple[PartitionState, PartitionState]] = field(default_factory=list)

    def fetch(self, now: float, ms_ago: float, connected: bool) -> None:
        if not connected or ms_ago > LIMITS.fetch_silence_ms:
            self.link = "down"
            return
        self.answered = True
        if self.link == "down":
            self.link, self.recovering_since = "recovering", now
        elif self.link == "unknown" or (
            self.link == "recovering" and now - self.recovering_since >= LIMITS.recovery_grace_s
        ):
            self.link = "up"

    def should_be_live(self) -> bool:
        return (
            not self.frozen
            and not self.released
            and not self.paused
            and not self.lagging
            and self.catch_up is None
            and self.link == "up"
        )


class PartitionMachine(RuleBasedStateMachine):
    """Only events the worker may send in the partition's phase; no event may raise."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.partition = Partition(1, LIMITS, self.now)
        self.model = Model()
        self.position = 0
        self.stale: int | None = None  # the pre-rebalance position, until a fetch answers after keep

    def _do(self, event: Callable[[], object]) -> object:
        before, transitions = self.partition.state, self.partition.transitions
        result = event()
        after = self.partition.state
        if after is before:
            assert self.partition.transitions == transitions
        else:
            assert after in ALLOWED[before], (before, after)
            assert self.partition.transitions == transitions + 1
            self.model.history.append((before, after))
        return result

    @property
    def active(self) -> bool:
        return not self.model.released

    @rule(dt=st.floats(0.0, 3.0))
    def tick(self, dt: float) -> None:
        self.now += dt

    @precondition(lambda self: self.model.released)
    @rule(event=st.sampled_from(sorted(set(ALL_EVENTS) - {"release"})))  # release: see the test above
    def released_refuses(self, event: str) -> None:
        with pytest.raises(IllegalTransition):
            self._do(lambda: ALL_EVENTS[event](self.partition))

    @precondition(lambda self: self.active)
    @rule(
        ms_ago=st.sampled_from([0.0, QUIET, LIMITS.fetch_silence_ms, LIMITS.fetch_silence_ms + 1, SILENT]),
        connected=st.booleans(),
    )
    def fetch_answered(self, ms_ago: float, connected: bool) -> None:
        self._do(lambda: self.partition.fetch_answered(self.now, ms_ago, connected=connected))
        self.model.fetch(self.now, ms_ago, connected)

    @precondition(lambda self: self.active)
    @rule()
    def disconnected(self) -> None:
        self._do(self.partition.disconnected)
        self.model.link = "down"

    @precondition(lambda self: self.active and self.model.link != "down")
    @rule(advance=st.integers(0, 30))
    def records_fetched(self, advance: int) -> None:
        self._do(lambda: self.partition.records_fetched(self.now))
        self.model.answered = True
        if self.model.link == "unknown":
            self.model.link = "up"
        self.position += advance

    @precondition(lambda self: self.active)
    @rule(behind=st.none() | st.integers(0, 2 * LIMITS.lag_threshold))
    def observe_lag(self, behind: int | None) -> None:
        self._do(lambda: self.partition.observe_lag(behind))
        self.model.lagging = behind is not None and behind > LIMITS.lag_threshold

    @precondition(lambda self: self.active and not self.model.frozen)
    @rule(queued=st.sampled_from([0, 199, 200, 201, 600, 999, 1000, 1001, 5000]))
    def observe_queued(self, queued: int) -> None:
        action = self._do(lambda: self.partition.observe_queued(queued))
        expected = FlowAction.NONE
        if not self.model.paused and queued > LIMITS.pause_high_bytes:
            expected, self.model.paused = FlowAction.PAUSE, True
        elif self.model.paused and queued < LIMITS.pause_low_bytes:
            expected, self.model.paused = FlowAction.RESUME, False
        assert action is expected

    @precondition(lambda self: self.active and not self.model.frozen)
    @rule(ahead=st.integers(0, 60))
    def catch_up(self, ahead: int) -> None:
        target = self.position + ahead
        self._do(lambda: self.partition.catch_up(target))
        self.model.catch_up = target if self.model.catch_up is None else max(self.model.catch_up, target)

    @precondition(lambda self: self.active)
    @rule(delta=st.integers(0, 40))
    def position_reached(self, delta: int) -> None:
        self.position += delta
        self._report_position(self.position)

    @precondition(lambda self: self.active and self.stale is not None and not self.model.answered)
    @rule()
    def stale_position_reported(self) -> None:
        """Before a fetch answers after keep, the consumer may still report its pre-rebalance position."""
        assert self.stale is not None
        self._report_position(self.stale)

    def _report_position(self, position: int) -> None:
        self._do(lambda: self.partition.position_reached(position))
        m = self.model
        if m.catch_up is not None and m.answered and position >= m.catch_up and not m.frozen:
            m.catch_up = None

    @precondition(lambda self: self.active and not self.model.frozen)
    @rule()
    def revoke(self) -> None:
        self._do(lambda: self.partition.revoke(self.now))
        self.model.frozen = True

    @precondition(lambda self: self.active and self.model.frozen)
    @rule(back=st.integers(0, 60))
    def keep(self, back: int) -> None:
        """Kept: the worker was at ``position``; the consumer re-reads from the committed offset."""
        target = self.position
        self._do(lambda: self.partition.keep(target))
        self.stale, self.position = target, max(0, target - back)
        self.model.frozen = False
        self.model.catch_up = target
        self.model.paused = False
        self.model.link = "unknown"
        self.model.answered = False

    @precondition(lambda self: self.active)
    @rule()
    def release(self) -> None:
        self._do(self.partition.release)
        self.model.released = True

    @invariant()
    def live_iff_live_state(self) -> None:
        assert self.partition.live == (self.partition.state is S.LIVE)

    @invariant()
    def live_as_the_docs_say(self) -> None:
        assert self.partition.live == self.model.should_be_live(), (self.partition.state, self.model)

    @invariant()
    def conditions_as_the_docs_say(self) -> None:
        p, m = self.partition, self.model
        if m.released:
            assert p.state is S.RELEASED and not p.owned
        elif m.frozen:
            assert p.state is S.REVOKING and not p.owned
        else:
            assert p.owned and p.state in FLOWING
            assert p.paused == m.paused
            assert p.catch_up_to == m.catch_up
            assert (p.state is S.PAUSED) == m.paused
            if not m.paused and m.link == "down":
                assert p.state is S.DISCONNECTED
            if m.link == "recovering" or m.catch_up is not None:
                assert not p.live


TestPartitionMachine = PartitionMachine.TestCase
TestPartitionMachine.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)


# -- illegal events raise, from any reachable state -----------------------------------------------


def drive_to(state: PartitionState) -> Partition:
    p = Partition(2, LIMITS, 0.0)
    steps: dict[PartitionState, Callable[[], object]] = {
        S.ASSIGNED: lambda: None,
        S.LIVE: lambda: p.fetch_answered(0.0, QUIET),
        S.LAGGING: lambda: (p.fetch_answered(0.0, QUIET), p.observe_lag(10**6)),
        S.CATCHING_UP: lambda: (p.fetch_answered(0.0, QUIET), p.catch_up(10)),
        S.RECOVERING: lambda: (p.fetch_answered(0.0, QUIET), p.disconnected(), p.fetch_answered(0.1, QUIET)),
        S.DISCONNECTED: lambda: p.disconnected(),
        S.PAUSED: lambda: p.observe_queued(10**6),
        S.REVOKING: lambda: p.revoke(0.0),
        S.RELEASED: lambda: p.release(),
    }
    steps[state]()
    assert p.state is state
    return p


LEGAL_WORKER_EVENTS: list[Callable[[Partition, float], object]] = [
    lambda p, t: p.fetch_answered(t, QUIET),
    lambda p, t: p.fetch_answered(t, SILENT),
    lambda p, t: p.fetch_answered(t, QUIET, connected=False),
    lambda p, t: p.disconnected(),
    lambda p, t: p.records_fetched(t),
    lambda p, t: p.observe_lag(10**6),
    lambda p, t: p.observe_lag(0),
    lambda p, t: p.observe_queued(10**6),
    lambda p, t: p.observe_queued(0),
    lambda p, t: p.catch_up(int(t) + 5),
    lambda p, t: p.position_reached(int(t) * 3),
    lambda p, t: p.revoke(t),
    lambda p, t: p.keep(int(t)),
]


def illegal_events(state: PartitionState) -> list[str]:
    if state is S.RELEASED:
        return sorted(ALL_EVENTS)
    if state is S.REVOKING:
        return ["observe_queued", "catch_up"]
    return ["keep"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, len(LEGAL_WORKER_EVENTS) - 1), max_size=25), st.data())
def test_illegal_events_raise_in_any_reached_state(steps: list[int], data: st.DataObject) -> None:
    p = Partition(4, LIMITS, 0.0)
    for t, index in enumerate(steps):
        event = LEGAL_WORKER_EVENTS[index]
        frozen = p.state is S.REVOKING
        if (frozen and index in (7, 8, 9, 11)) or (not frozen and index == 12):
            continue  # not something the worker sends in this phase
        event(p, float(t))
    if data.draw(st.booleans()):
        p.release()
    state = p.state
    name = data.draw(st.sampled_from(illegal_events(state)))
    with pytest.raises(IllegalTransition):
        ALL_EVENTS[name](p)
    assert p.state is state
