"""One routing decision per input record (pipeline.router), including the fair session cap."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pipeline.contract import Checkpoint
from pipeline.records import AudioFormat, InputMessage, MessageType
from pipeline.router import Decision, Route, Router
from tests.support.checkpoints import checkpoint

FORMAT = AudioFormat("pcm_s16le", 16000)


def audio(session_id: str, seq: int) -> InputMessage:
    return InputMessage(session_id, "audio", seq, b"\0\0", FORMAT)


def message(session_id: str, kind: MessageType, seq: int) -> InputMessage:
    return audio(session_id, seq) if kind == "audio" else InputMessage(session_id, kind, seq)


def no_checkpoints(session_id: str) -> Checkpoint | None:
    return None


def checkpoints(*known: Checkpoint) -> Any:
    table = {c.session_id: c for c in known}
    return table.get


def router(max_sessions: int = 10, position: int = 0) -> Router:
    r = Router(max_sessions)
    r.assign(0, position)
    return r


# -- each rule ------------------------------------------------------------------------------------


def test_audio_for_an_unknown_key_opens_with_its_format() -> None:
    r = router()
    route = r.route(0, 0, audio("a", 0), no_checkpoints)
    assert route.decision is Decision.OPEN
    assert route.format == FORMAT


def test_records_of_an_open_session_are_delivered() -> None:
    r = router()
    r.route(0, 0, audio("a", 0), no_checkpoints)
    r.opened("a", 0)
    assert r.route(0, 1, audio("a", 1), no_checkpoints).decision is Decision.DELIVER
    assert r.route(0, 2, InputMessage("a", "finalize", 2), no_checkpoints).decision is Decision.DELIVER
    assert r.route(0, 3, InputMessage("a", "end", 3), no_checkpoints).decision is Decision.DELIVER


def test_opening_twice_is_an_error() -> None:
    r = router()
    r.opened("a", 0)
    with pytest.raises(ValueError):
        r.opened("a", 0)


@pytest.mark.parametrize("kind", ["finalize", "end"])
def test_a_control_record_without_a_session_is_rejected(kind: MessageType) -> None:
    route = router().route(0, 0, InputMessage("a", kind, 0), no_checkpoints)
    assert route.decision is Decision.REJECT
    assert route.reason == "no_session"


def test_audio_without_a_format_and_without_a_session_is_rejected() -> None:
    route = router().route(0, 0, InputMessage("a", "audio", 0, b"\0\0", None), no_checkpoints)
    assert (route.decision, route.reason) == (Decision.REJECT, "no_session")


def test_records_below_the_assigned_position_were_handled() -> None:
    r = router(position=10)
    assert r.seen(0, 9)
    assert r.route(0, 9, audio("a", 0), no_checkpoints) == Route(Decision.SKIP, "handled")
    assert not r.seen(0, 10)
    assert r.route(0, 10, audio("a", 0), no_checkpoints).decision is Decision.OPEN
    assert r.seen(0, 10)
    assert r.frontier(0) == 11


def test_a_record_read_again_is_handled() -> None:
    r = router()
    r.route(0, 0, audio("a", 0), no_checkpoints)
    r.opened("a", 0)
    r.route(0, 1, audio("a", 1), no_checkpoints)
    assert r.route(0, 0, audio("a", 0), no_checkpoints) == Route(Decision.SKIP, "handled")
    assert r.route(0, 1, audio("a", 1), no_checkpoints) == Route(Decision.SKIP, "handled")


def test_an_open_checkpoint_resumes_at_its_resume_offset() -> None:
    r = router(position=3)
    resumable = checkpoint("a", resume_offset=5, next_input_seq=4)
    assert r.route(0, 3, audio("a", 2), checkpoints(resumable)) == Route(Decision.SKIP, "below_resume")
    assert r.route(0, 4, audio("a", 3), checkpoints(resumable)) == Route(Decision.SKIP, "below_resume")
    route = r.route(0, 5, audio("a", 4), checkpoints(resumable))
    assert route.decision is Decision.RESUME
    assert route.checkpoint is resumable


def test_a_resume_waits_for_a_slot() -> None:
    r = router(max_sessions=1)
    r.opened("x", 0)
    resumable = checkpoint("a", resume_offset=0, next_input_seq=0)
    assert r.route(0, 0, InputMessage("a", "finalize", 3), checkpoints(resumable)).decision is Decision.DEFER
    assert r.deferred_floor(0) == 0


def test_a_finished_checkpoint_skips_its_input_then_flags_duplicates_and_late_records() -> None:
    r = router(position=8)
    done = checkpoint("a", status="complete", resume_offset=11, close_offset=10, next_input_seq=6)
    lookup = checkpoints(done)
    assert r.route(0, 8, audio("a", 4), lookup) == Route(Decision.SKIP, "finished")
    assert r.route(0, 10, InputMessage("a", "end", 5), lookup) == Route(Decision.SKIP, "finished")
    assert r.route(0, 11, audio("a", 5), lookup).decision is Decision.DUPLICATE
    late = r.route(0, 12, audio("a", 6), lookup)
    assert (late.decision, late.reason) == (Decision.REJECT, "after_end")


def test_a_finished_checkpoint_is_never_deferred() -> None:
    r = router(max_sessions=1)
    r.opened("x", 0)
    done = checkpoint("a", status="complete", resume_offset=3, close_offset=2, next_input_seq=3)
    assert r.route(0, 1, audio("a", 1), checkpoints(done)).decision is Decision.SKIP
    assert r.route(0, 3, audio("a", 3), checkpoints(done)).decision is Decision.REJECT
    assert r.deferred(0) == 0


def test_an_ended_session_turns_later_records_into_duplicates_or_rejects() -> None:
    r = router()
    r.opened("a", 0)
    r.ended("a", 3)
    assert "a" not in r.open
    assert r.route(0, 0, audio("a", 2), no_checkpoints).decision is Decision.DUPLICATE
    assert r.route(0, 1, InputMessage("a", "end", 3), no_checkpoints).decision is Decision.DUPLICATE
    late = r.route(0, 2, audio("a", 4), no_checkpoints)
    assert (late.decision, late.reason) == (Decision.REJECT, "after_end")


def test_the_memory_of_ended_sessions_is_bounded_oldest_first() -> None:
    r = Router(10, completed_memory=2)
    r.assign(0, 0)
    for session_id in ("a", "b", "c"):
        r.opened(session_id, 0)
        r.ended(session_id, 0)
    assert r.route(0, 0, audio("a", 0), no_checkpoints).decision is Decision.OPEN
    assert r.route(0, 1, audio("b", 0), no_checkpoints).decision is Decision.DUPLICATE
    assert r.route(0, 2, audio("c", 0), no_checkpoints).decision is Decision.DUPLICATE


def test_unassign_and_forget_close_sessions_without_ending_them() -> None:
    r = Router(10)
    r.assign(0, 0)
    r.assign(1, 0)
    r.opened("a", 0)
    r.opened("b", 1)
    r.opened("c", 1)
    r.unassign(1)
    assert set(r.open) == {"a"}
    r.forget("a")
    assert r.open == {}
    assert r.route(0, 0, audio("a", 5), no_checkpoints).decision is Decision.OPEN  # not marked ended


def test_the_cap_is_shared_by_all_partitions() -> None:
    r = Router(1)
    r.assign(0, 0)
    r.assign(1, 0)
    r.opened("a", 0)
    assert r.route(1, 0, audio("b", 0), no_checkpoints).decision is Decision.DEFER
    assert r.rewind(1) is None
    r.ended("a", 0)
    assert r.rewind(1) == 0
    assert r.rewind(0) is None  # nothing waits there


def test_a_record_read_without_routing_counts_as_handled() -> None:
    r = router()
    r.read(0, 0)
    assert r.seen(0, 0)
    assert r.frontier(0) == 1
    assert r.route(0, 0, audio("a", 0), no_checkpoints) == Route(Decision.SKIP, "handled")


def test_a_deferred_record_read_without_routing_stops_holding_the_floor() -> None:
    r = router(max_sessions=1)
    r.opened("x", 0)
    assert r.route(0, 0, audio("a", 0), no_checkpoints).decision is Decision.DEFER
    assert r.route(0, 1, audio("b", 0), no_checkpoints).decision is Decision.DEFER
    r.read(0, 0)
    assert r.deferred_floor(0) == 1
    assert r.seen(0, 0)


# -- the fair cap ---------------------------------------------------------------------------------


def route_and_act(r: Router, offset: int, msg: InputMessage) -> Decision:
    decision = r.route(0, offset, msg, no_checkpoints).decision
    if decision is Decision.OPEN:
        r.opened(msg.session_id, 0)
    return decision


def test_a_full_cap_defers_only_the_key_waiting_for_a_slot() -> None:
    r = router(max_sessions=2)
    log = [
        audio("a", 0),
        audio("b", 0),
        audio("c", 0),
        audio("a", 1),
        audio("c", 1),
        audio("b", 1),
        InputMessage("a", "end", 2),
        audio("b", 2),
        InputMessage("c", "finalize", 2),
    ]
    decisions = [route_and_act(r, offset, msg) for offset, msg in enumerate(log)]
    D = Decision
    assert decisions == [D.OPEN, D.OPEN, D.DEFER, D.DELIVER, D.DEFER, D.DELIVER, D.DELIVER, D.DELIVER, D.DEFER]
    assert r.deferred(0) == 3
    assert r.deferred_floor(0) == 2
    assert not r.seen(0, 2) and r.seen(0, 3)
    assert r.rewind(0) is None  # no slot yet

    r.ended("a", 2)
    assert r.deferred_floor(0) == 2
    # A later record of the waiting key keeps waiting, even though a slot is free now: the key's order.
    assert route_and_act(r, 9, audio("c", 3)) is D.DEFER
    assert r.rewind(0) == 2

    again = {
        offset: route_and_act(r, offset, log[offset] if offset < len(log) else audio("c", 3)) for offset in range(2, 10)
    }
    assert again == {
        2: D.OPEN,
        3: D.SKIP,
        4: D.DELIVER,
        5: D.SKIP,
        6: D.SKIP,
        7: D.SKIP,
        8: D.DELIVER,
        9: D.DELIVER,
    }
    assert r.deferred(0) == 0
    assert r.deferred_floor(0) is None
    assert r.rewind(0) is None
    assert route_and_act(r, 10, audio("c", 4)) is D.DELIVER


def test_a_rewind_with_two_waiting_keys_takes_the_first_and_keeps_the_second_waiting() -> None:
    r = router(max_sessions=1)
    log = [audio("a", 0), audio("b", 0), audio("c", 0), audio("b", 1), audio("c", 1)]
    assert [route_and_act(r, o, m) for o, m in enumerate(log)] == [Decision.OPEN] + [Decision.DEFER] * 4
    r.ended("a", 0)
    assert r.rewind(0) == 1
    assert [route_and_act(r, o, log[o]) for o in range(1, 5)] == [
        Decision.OPEN,
        Decision.DEFER,
        Decision.DELIVER,
        Decision.DEFER,
    ]
    assert r.deferred_floor(0) == 2
    r.ended("b", 1)
    assert r.rewind(0) == 2
    assert [route_and_act(r, o, log[o]) for o in range(2, 5)] == [Decision.OPEN, Decision.SKIP, Decision.DELIVER]
    assert r.deferred(0) == 0


# -- random interleavings -------------------------------------------------------------------------

PARTITIONS = (0, 1)


@dataclass
class Record:
    session_id: str
    kind: MessageType | None  # None: a record that cannot be decoded
    seq: int


class RouterMachine(RuleBasedStateMachine):
    """A worker-like driver: it reads, acts on every decision, ends sessions, rewinds."""

    def __init__(self) -> None:
        super().__init__()
        self.router: Router | None = None
        self.log: dict[int, list[Record]] = {p: [] for p in PARTITIONS}
        self.position = dict.fromkeys(PARTITIONS, 0)
        self.acted: Counter[tuple[int, int]] = Counter()
        self.deferred: dict[int, set[int]] = {p: set() for p in PARTITIONS}
        self.open: dict[str, tuple[int, int]] = {}  # session → (partition, first offset)
        self.last_seq: dict[str, int] = {}  # session → last seq delivered
        self.taken: dict[str, list[int]] = {}  # session → seqs opened / delivered, in order
        self.next_seq: Counter[str] = Counter()
        self.keys = 0

    @rule(cap=st.integers(1, 4))
    @precondition(lambda self: self.router is None)
    def start(self, cap: int) -> None:
        self.router = Router(cap)
        for p in PARTITIONS:
            self.router.assign(p, 0)

    @property
    def r(self) -> Router:
        assert self.router is not None
        return self.router

    # -- the producers --

    @precondition(lambda self: self.router is not None)
    @rule(p=st.sampled_from(PARTITIONS), pick=st.integers(0, 6), end=st.integers(0, 5))
    def produce(self, p: int, pick: int, end: int) -> None:
        keys = sorted({rec.session_id for rec in self.log[p] if rec.kind is not None})
        if pick >= len(keys):
            self.keys += 1
            session_id = f"p{p}-k{self.keys}"
        else:
            session_id = keys[pick]
        seq = self.next_seq[session_id]
        self.next_seq[session_id] += 1
        kind: MessageType = "end" if end == 0 and seq > 0 else "audio"
        self.log[p].append(Record(session_id, kind, seq))

    @precondition(lambda self: self.router is not None)
    @rule(p=st.sampled_from(PARTITIONS))
    def produce_garbage(self, p: int) -> None:
        self.log[p].append(Record("?", None, 0))

    # -- the worker --

    def _read(self, p: int) -> None:
        offset = self.position[p]
        record = self.log[p][offset]
        self.position[p] += 1
        seen = self.r.seen(p, offset)
        if record.kind is None:
            if not seen:  # the worker dead-letters it without routing
                self.r.read(p, offset)
                self.acted[(p, offset)] += 1
                assert self.acted[(p, offset)] == 1, f"record {p}/{offset} acted on twice"
            return
        route = self.r.route(p, offset, message(record.session_id, record.kind, record.seq), no_checkpoints)
        decision = route.decision
        assert seen == (decision is Decision.SKIP and route.reason == "handled"), (seen, route)
        if decision is Decision.SKIP:
            assert route.reason == "handled"
            return
        if decision is Decision.DEFER:
            assert record.session_id not in self.open, "a record of an open session was deferred"
            assert record.session_id not in self.r.open
            self.deferred[p].add(offset)
            return
        self.acted[(p, offset)] += 1
        assert self.acted[(p, offset)] == 1, f"record {p}/{offset} acted on twice"
        self.deferred[p].discard(offset)
        if decision is Decision.OPEN:
            assert record.session_id not in self.open
            self.r.opened(record.session_id, p)
            self.open[record.session_id] = (p, offset)
        if decision in (Decision.OPEN, Decision.DELIVER):
            assert record.session_id in self.open
            self.taken.setdefault(record.session_id, []).append(record.seq)
            self.last_seq[record.session_id] = record.seq
            if record.kind == "end":
                self._end(record.session_id)

    def _end(self, session_id: str) -> None:
        del self.open[session_id]
        self.r.ended(session_id, self.last_seq[session_id])

    @precondition(lambda self: self.router is not None)
    @rule(p=st.sampled_from(PARTITIONS), count=st.integers(1, 4))
    def read(self, p: int, count: int) -> None:
        for _ in range(count):
            if self.position[p] < len(self.log[p]):
                self._read(p)

    @precondition(lambda self: self.open)
    @rule(pick=st.integers(0, 10))
    def end_a_session(self, pick: int) -> None:
        """The worker ends a session on its own (idle, error)."""
        self._end(sorted(self.open)[pick % len(self.open)])

    @precondition(lambda self: self.router is not None)
    @rule(p=st.sampled_from(PARTITIONS))
    def rewind(self, p: int) -> None:
        to = self.r.rewind(p)
        if to is None:
            assert not self.deferred[p] or len(self.r.open) >= self.r.max_sessions
        else:
            assert to == min(self.deferred[p])
            assert len(self.r.open) < self.r.max_sessions
            self.position[p] = to

    # -- what must hold --

    def watermark(self, p: int) -> int:
        """What the worker commits: min(open sessions' first offsets, deferred floor, position)."""
        floor = self.r.deferred_floor(p)
        candidates = [first for (q, first) in self.open.values() if q == p] + [self.position[p]]
        return min(candidates + ([floor] if floor is not None else []))

    @invariant()
    def deferral_is_tracked(self) -> None:
        if self.router is None:
            return
        assert set(self.r.open) == set(self.open)
        for p in PARTITIONS:
            assert self.r.deferred(p) == len(self.deferred[p])
            assert self.r.deferred_floor(p) == (min(self.deferred[p]) if self.deferred[p] else None)

    @invariant()
    def watermark_never_passes_needed_input(self) -> None:
        if self.router is None:
            return
        for p in PARTITIONS:
            mark = self.watermark(p)
            assert all(mark <= first for (q, first) in self.open.values() if q == p)
            assert all(mark <= offset for offset in self.deferred[p])
            assert all(self.acted[(p, offset)] == 1 for offset in range(mark)), "committed past unhandled input"

    @invariant()
    def each_key_is_taken_in_order(self) -> None:
        for session_id, seqs in self.taken.items():
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (session_id, seqs)
            assert seqs[0] == 0, (session_id, seqs)

    def teardown(self) -> None:
        """Drain: end everything, rewind, re-read until nothing waits; every record acted on once."""
        if self.router is None:
            return
        for _ in range(10_000):
            for p in PARTITIONS:
                while self.position[p] < len(self.log[p]):
                    self._read(p)
            if not any(self.deferred.values()):
                break
            for session_id in sorted(self.open):
                self._end(session_id)
            for p in PARTITIONS:
                self.rewind(p)
        else:
            raise AssertionError("deferred records never drained")
        for p in PARTITIONS:
            assert all(self.acted[(p, offset)] == 1 for offset in range(len(self.log[p])))


TestRouterMachine = RouterMachine.TestCase
TestRouterMachine.settings = settings(max_examples=250, stateful_step_count=50, deadline=None)
