"""What one transaction of an input partition carries (pipeline.commit): the CommitBook's rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pipeline.commit import MARK_LETTERED_MAX, CommitBook, CommitPlan, Mark, OutRecord
from pipeline.contract import Checkpoint, CheckpointStatus
from pipeline.offsets import PartitionWatermark
from tests.support.checkpoints import checkpoint

SESSIONS = "stt.sessions"
TURNS = "stt.turns"
DEAD = "stt.dead-letter"


def out(session_id: str, seq: int) -> OutRecord:
    return OutRecord(TURNS, session_id, f"{session_id}:{seq}".encode())


def book(position: int = 0) -> CommitBook:
    return CommitBook(0, SESSIONS, PartitionWatermark(position), committed_offset=position)


cp = checkpoint


# -- the rules, one by one ------------------------------------------------------------------------


def test_a_plan_carries_records_changed_checkpoints_and_the_watermark() -> None:
    b = book()
    b.consumed(0)
    b.add([out("a", 0), out("a", 1)], cp("a", resume_offset=0, next_seq=2))
    b.consumed(1)
    b.add([OutRecord(DEAD, None, b"bad")])
    plan = b.plan()
    assert plan.records == (out("a", 0), out("a", 1), OutRecord(DEAD, None, b"bad"))
    assert [(s, c.to_dict() if c else None) for s, c in plan.checkpoints] == [
        ("a", cp("a", resume_offset=0, next_seq=2).to_dict())
    ]
    assert plan.offset == 0  # the open session needs its input from 0 on
    assert not plan.advance
    assert not plan.empty


def test_an_empty_plan() -> None:
    b = book(5)
    plan = b.plan()
    assert plan == CommitPlan((), (), 5, False, mark=Mark(5))
    assert plan.empty
    b.committed(plan)


def test_the_offset_follows_the_lowest_hold() -> None:
    b = book()
    for offset in range(10):
        b.consumed(offset)
    b.add([], cp("a", resume_offset=4))
    b.hold("deferred-7", 7)
    b.hold("deferred-2", 2)
    plan = b.plan()
    assert (plan.offset, plan.advance) == (2, True)
    b.committed(plan)
    b.release("deferred-2")
    plan = b.plan()
    assert plan.offset == 4
    b.committed(plan)
    b.add([], cp("a", status="complete", resume_offset=9, close_offset=8))
    plan = b.plan()
    assert plan.offset == 7
    b.committed(plan)
    b.release("deferred-7")
    plan = b.plan()
    assert plan.offset == 10
    assert b.committed_offset == 7
    b.committed(plan)
    assert b.committed_offset == 10


def test_records_added_while_a_plan_is_in_flight_belong_to_the_next() -> None:
    b = book()
    b.add([out("a", 0)], cp("a", next_seq=1))
    first = b.plan()
    b.add([out("a", 1)], cp("a", next_seq=2))
    assert b.pending == 1
    b.committed(first)
    second = b.plan()
    assert second.records == (out("a", 1),)
    assert [c.next_seq for _, c in second.checkpoints if c is not None] == [2]


def test_a_failed_plan_puts_its_records_back_in_front() -> None:
    b = book()
    b.add([out("a", 0), out("a", 1)], cp("a", next_seq=2))
    first = b.plan()
    b.add([out("a", 2)], cp("a", next_seq=3))
    b.failed(first)
    assert b.pending == 3
    second = b.plan()
    assert second.records == (out("a", 0), out("a", 1), out("a", 2))
    assert [c for _, c in second.checkpoints] == [cp("a", next_seq=3)]


def test_a_failed_plan_offers_its_checkpoints_again() -> None:
    b = book()
    b.add([out("a", 0)], cp("a", next_seq=1))
    b.failed(b.plan())
    assert [c for _, c in b.plan().checkpoints] == [cp("a", next_seq=1)]


def test_a_failed_plan_returns_the_quarantined_records_and_requeues_the_rest_in_front() -> None:
    b = book()
    b.add([out("a", 0), out("a", 1), out("a", 2)], cp("a", next_seq=3))
    first = b.plan()
    b.add([out("a", 3)], cp("a", next_seq=4))
    assert b.failed(first, quarantine={1}) == [out("a", 1)]
    assert b.plan().records == (out("a", 0), out("a", 2), out("a", 3))


def test_eager_sends_take_each_record_once_and_the_plan_counts_them_as_sent() -> None:
    b = book()
    b.add([out("a", 0)], cp("a", next_seq=1))
    assert b.to_send() == [out("a", 0)]
    assert b.to_send() == []
    b.add([out("a", 1)], cp("a", next_seq=2))
    plan = b.plan()
    assert (plan.records, plan.sent, plan.unsent) == ((out("a", 0), out("a", 1)), 1, (out("a", 1),))


def test_nothing_is_sent_eagerly_while_a_plan_is_in_flight() -> None:
    b = book()
    b.add([out("a", 0)], cp("a", next_seq=1))
    first = b.plan()
    b.add([out("a", 1)], cp("a", next_seq=2))
    assert b.to_send() == []
    b.committed(first)
    assert b.to_send() == [out("a", 1)]


def test_an_aborted_plan_requeues_its_eagerly_sent_records_to_be_sent_again() -> None:
    b = book()
    b.add([out("a", 0), out("a", 1)], cp("a", next_seq=2))
    assert len(b.to_send()) == 2
    first = b.plan()
    assert first.sent == 2
    b.add([out("a", 2)], cp("a", next_seq=3))
    b.failed(first)
    assert b.to_send() == [out("a", 0), out("a", 1), out("a", 2)]
    assert b.plan().sent == 3


def test_only_one_plan_in_flight() -> None:
    b = book()
    plan = b.plan()
    with pytest.raises(RuntimeError):
        b.plan()
    b.committed(plan)
    b.plan()


def test_only_the_plan_in_flight_can_finish() -> None:
    b = book()
    plan = b.plan()
    b.committed(plan)
    with pytest.raises(RuntimeError):
        b.committed(plan)
    with pytest.raises(RuntimeError):
        b.failed(plan)
    b.plan()
    with pytest.raises(RuntimeError):
        b.failed(CommitPlan((), (), 0, False))


def test_a_checkpoint_differing_only_in_its_time_stamp_is_not_offered_again() -> None:
    b = book()
    b.add([], cp("a", next_seq=0, at=1))
    plan = b.plan()
    assert len(plan.checkpoints) == 1
    b.committed(plan)
    b.add([], cp("a", next_seq=0, at=2))
    assert b.plan().checkpoints == ()


def test_a_finished_session_is_tombstoned_once_committed_and_passed() -> None:
    b = book()
    for offset in range(4):
        b.consumed(offset)
    b.hold("deferred", 2)
    done = cp("a", status="complete", resume_offset=4, close_offset=3, next_seq=5)
    b.add([out("a", 4)], done)
    plan = b.plan()
    assert plan.checkpoints == (("a", done),)  # offered first, not tombstoned: not committed yet
    assert plan.offset == 2
    b.committed(plan)
    plan = b.plan()
    assert plan.checkpoints == ()  # committed, but the offset (2) has not passed its close offset (3)
    b.committed(plan)
    b.release("deferred")
    plan = b.plan()
    assert plan.offset == 4
    assert plan.checkpoints == (("a", None),)
    b.failed(plan)
    plan = b.plan()
    assert plan.checkpoints == (("a", None),)  # offered again after the abort
    b.committed(plan)
    assert b.checkpoint("a") is None
    assert b.plan().checkpoints == ()


def test_a_finished_checkpoint_is_not_tombstoned_in_the_plan_that_first_commits_it() -> None:
    b = book()
    for offset in range(4):
        b.consumed(offset)
    done = cp("a", status="complete", resume_offset=4, close_offset=3, next_seq=1)
    b.add([out("a", 0)], done)
    plan = b.plan()
    assert plan.offset == 4
    assert plan.checkpoints == (("a", done),)


def test_resumed_holds_open_checkpoints_and_tombstones_finished_ones() -> None:
    known: dict[str, Checkpoint] = {
        "a": cp("a", resume_offset=12, next_seq=3),
        "b": cp("b", status="complete", resume_offset=8, close_offset=7, next_seq=2),
        "c": cp("c", status="complete", resume_offset=30, close_offset=29, next_seq=1),
    }
    b = CommitBook.resumed(0, SESSIONS, 10, known)
    assert b.checkpoint("a") == known["a"]
    assert dict(b.checkpoints()) == known
    for offset in range(10, 40):
        b.consumed(offset)
    plan = b.plan()
    assert plan.offset == 12
    assert plan.checkpoints == (("b", None),)
    assert plan.advance
    b.committed(plan)
    b.add([out("a", 3)], cp("a", resume_offset=40, next_seq=4))
    plan = b.plan()
    assert plan.offset == 40
    assert dict(plan.checkpoints) == {"a": cp("a", resume_offset=40, next_seq=4), "c": None}


# -- the model ------------------------------------------------------------------------------------


@dataclass
class Session:
    first: int
    status: CheckpointStatus = "open"
    out: int = 0
    resume: int = 0
    input_seq: int = 1


@dataclass
class World:
    """What Kafka holds: committed output, the compacted `stt.sessions` topic, the committed offset."""

    offset: int = 0
    records: dict[str, list[int]] = field(default_factory=dict)
    dead: list[bytes] = field(default_factory=list)
    sessions: dict[str, Checkpoint] = field(default_factory=dict)


def same(a: Checkpoint, b: Checkpoint) -> bool:
    return {**a.to_dict(), "at": 0} == {**b.to_dict(), "at": 0}


class CommitMachine(RuleBasedStateMachine):
    """Sessions hand over records with their checkpoint; plans commit, abort, or the worker crashes."""

    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        self.book = book(0)
        self.pos = 0
        self.sessions: dict[str, Session] = {}
        self.latest: dict[str, Checkpoint] = {}
        self.holds: dict[str, int] = {}
        self.pending: list[OutRecord] = []
        self.dead_inputs: dict[bytes, int] = {}  # dead letter → its input offset
        self.inflight: CommitPlan | None = None
        self.sent = 0  # leading ``pending`` records sent eagerly into the open transaction
        self.clock = 0
        self.ids = 0

    # -- input and sessions --

    def _consume(self) -> int:
        offset = self.pos
        self.pos += 1
        self.book.consumed(offset)
        return offset

    def _hand_over(self, session_id: str, records: list[OutRecord], checkpoint: Checkpoint) -> None:
        self.book.add(records, checkpoint)
        self.pending.extend(records)
        self.latest[session_id] = checkpoint

    def _checkpoint(self, session_id: str, **extra: Any) -> Checkpoint:
        s = self.sessions[session_id]
        self.clock += 1
        return checkpoint(
            session_id,
            s.status,
            s.resume,
            close_offset=extra.get("close_offset"),
            next_input_seq=s.input_seq,
            next_seq=s.out,
            at=self.clock,
        )

    def open_ids(self) -> list[str]:
        return sorted(sid for sid, s in self.sessions.items() if s.status == "open")

    @rule()
    def open_session(self) -> None:
        offset = self._consume()
        self.ids += 1
        session_id = f"s{self.ids}"
        self.sessions[session_id] = Session(first=offset, resume=offset)
        self._hand_over(session_id, [], self._checkpoint(session_id))

    @precondition(lambda self: self.open_ids())
    @rule(pick=st.integers(0, 20), count=st.integers(0, 3), transcribed=st.integers(0, 50))
    def produce(self, pick: int, count: int, transcribed: int) -> None:
        ids = self.open_ids()
        session_id = ids[pick % len(ids)]
        s = self.sessions[session_id]
        offset = self._consume()
        records = [out(session_id, s.out + i) for i in range(count)]
        s.out += count
        s.input_seq += 1
        if offset + 1 > s.resume:
            s.resume += transcribed % (offset + 1 - s.resume + 1)
        self._hand_over(session_id, records, self._checkpoint(session_id))

    @precondition(lambda self: self.open_ids())
    @rule(pick=st.integers(0, 20), count=st.integers(0, 2))
    def finish(self, pick: int, count: int) -> None:
        ids = self.open_ids()
        session_id = ids[pick % len(ids)]
        s = self.sessions[session_id]
        offset = self._consume()
        records = [out(session_id, s.out + i) for i in range(count)]
        s.out += count
        s.input_seq += 1
        s.status, s.resume = "complete", offset + 1
        self._hand_over(session_id, records, self._checkpoint(session_id, close_offset=offset))

    @rule()
    def dead_letter(self) -> None:
        offset = self._consume()
        self.ids += 1
        value = f"dead-{self.ids}".encode()
        record = OutRecord(DEAD, None, value)
        self.book.add([record])
        self.pending.append(record)
        self.dead_inputs[value] = offset

    @rule()
    def defer(self) -> None:
        offset = self._consume()
        key = f"deferred-{offset}"
        self.book.hold(key, offset)
        self.holds[key] = offset

    @precondition(lambda self: self.holds)
    @rule(pick=st.integers(0, 20))
    def undefer(self, pick: int) -> None:
        key = sorted(self.holds)[pick % len(self.holds)]
        self.book.release(key)
        del self.holds[key]

    # -- the transaction --

    @rule()
    def send_eagerly(self) -> None:
        """Eager mode: what was added since the last eager send goes into the open transaction now;
        nothing while a plan is in flight."""
        batch = self.book.to_send()
        if self.inflight is not None:
            assert batch == []
            return
        assert batch == self.pending[self.sent :], "an eager send lost, repeated or reordered records"
        self.sent = len(self.pending)

    @precondition(lambda self: self.inflight is None)
    @rule()
    def plan(self) -> None:
        plan = self.book.plan()
        self.inflight = plan
        assert plan.records == tuple(self.pending), "records lost, duplicated or reordered"
        assert plan.sent == self.sent, "the plan miscounts the records already sent"
        assert plan.unsent == tuple(self.pending[self.sent :])
        self.pending, self.sent = [], 0
        needed = [self.pos, *self.holds.values()]
        needed += [self.latest[sid].resume_offset for sid in self.open_ids()]
        assert plan.offset == min(needed)
        assert plan.offset >= self.world.offset
        assert plan.advance == (plan.offset != self.world.offset)
        offered = dict(plan.checkpoints)
        assert len(offered) == len(plan.checkpoints), "a session twice in one plan"
        expected: dict[str, Checkpoint | None] = {}
        for sid, latest in self.latest.items():
            committed = self.world.sessions.get(sid)
            if committed is not None and same(committed, latest):
                if latest.status != "open" and latest.close_offset is not None and latest.close_offset < plan.offset:
                    expected[sid] = None
            else:
                expected[sid] = latest
        assert offered == expected

    @precondition(lambda self: self.inflight is not None)
    @rule()
    def plan_again_raises(self) -> None:
        with pytest.raises(RuntimeError):
            self.book.plan()

    @precondition(lambda self: self.inflight is not None)
    @rule()
    def commit(self) -> None:
        assert self.inflight is not None
        plan, self.inflight = self.inflight, None
        self.book.committed(plan)
        self._apply(plan)
        assert self.book.committed_offset == plan.offset

    @precondition(lambda self: self.inflight is not None)
    @rule()
    def abort(self) -> None:
        assert self.inflight is not None
        plan, self.inflight = self.inflight, None
        self.book.failed(plan)
        self.pending = list(plan.records) + self.pending
        self.sent = 0  # requeued: sent again into the next transaction

    def _apply(self, plan: CommitPlan) -> None:
        """``plan`` is now in Kafka: check it could never lose or duplicate anything."""
        world = self.world
        for record in plan.records:
            assert record.value is not None
            if record.topic == TURNS:
                assert record.key is not None
                seq = int(record.value.decode().rsplit(":", 1)[1])
                committed = world.records.setdefault(record.key, [])
                assert seq == len(committed), f"{record.key}: seq {seq} after {len(committed)} committed"
                committed.append(seq)
            else:
                assert record.value not in world.dead
                world.dead.append(record.value)
        for sid, cp in plan.checkpoints:
            if cp is None:
                previous = world.sessions.pop(sid)
                assert previous.status != "open"
                assert previous.close_offset is not None and previous.close_offset < plan.offset
                del self.latest[sid]
                del self.sessions[sid]
            else:
                assert cp.next_seq <= len(world.records.get(sid, [])), (
                    f"{sid}: checkpoint counts {cp.next_seq} outputs, "
                    f"only {len(world.records.get(sid, []))} committed"
                )
                world.sessions[sid] = cp
        world.offset = plan.offset
        for value, offset in self.dead_inputs.items():
            if offset < world.offset:
                assert value in world.dead, "input committed past an uncommitted dead letter"
        for sid, s in self.sessions.items():
            committed = world.sessions.get(sid)
            if committed is None:
                assert s.first >= world.offset, f"{sid}: its input was committed without its cp"
            elif committed.status == "open":
                assert committed.resume_offset >= world.offset, f"{sid}: committed past its resume offset"

    @rule(committed=st.booleans())
    def crash(self, committed: bool) -> None:
        """The worker dies; the in-flight transaction commits or not; a new worker resumes the partition."""
        if self.inflight is not None and committed:
            self._apply(self.inflight)
        self.inflight = None
        world = self.world
        for value, offset in list(self.dead_inputs.items()):
            if value not in world.dead:
                assert offset >= world.offset, "a dead letter lost with its input committed"
                del self.dead_inputs[value]  # its input is read again: a new dead letter
        for sid, s in list(self.sessions.items()):
            checkpoint = world.sessions.get(sid)
            count = len(world.records.get(sid, []))
            if checkpoint is None:
                assert count == 0, f"{sid}: outputs committed without a checkpoint would be produced again"
                assert s.first >= world.offset
                del self.sessions[sid]  # its input is read again: it opens anew (as a new session here)
                self.latest.pop(sid, None)
                continue
            assert count == checkpoint.next_seq, f"{sid}: {count} outputs committed, checkpoint says {checkpoint}"
            s.status, s.out, s.resume = checkpoint.status, count, checkpoint.resume_offset
            s.input_seq = checkpoint.next_input_seq
            if checkpoint.status == "open":
                assert checkpoint.resume_offset >= world.offset
            self.latest[sid] = checkpoint
        assert set(self.latest) == set(world.sessions)
        self.pos = world.offset
        self.holds = {}
        self.pending, self.sent = [], 0
        self.book = CommitBook.resumed(0, SESSIONS, world.offset, dict(world.sessions))

    @invariant()
    def book_reports_what_it_holds(self) -> None:
        assert self.book.pending == len(self.pending)
        assert self.book.unsent == len(self.pending) - self.sent
        assert self.book.in_flight == (self.inflight is not None)
        assert dict(self.book.checkpoints()) == self.latest

    def teardown(self) -> None:
        """Everything added ends up committed, exactly once."""
        if self.inflight is not None:
            self.commit()
        for _ in range(3):
            self.plan()
            self.commit()
        for sid, s in self.sessions.items():
            assert self.world.records.get(sid, []) == list(range(s.out))
            assert self.world.sessions[sid].next_seq == s.out
        assert sorted(self.world.dead) == sorted(self.dead_inputs)


TestCommitMachine = CommitMachine.TestCase
TestCommitMachine.settings = settings(max_examples=250, stateful_step_count=50, deadline=None)


# -- dead letters across a crash: the mark ---------------------------------------------------------


def letter(offset: int) -> OutRecord:
    return OutRecord(DEAD, None, str(offset).encode())


def test_a_dead_letter_commits_the_mark_even_when_the_offset_stays() -> None:
    b = book()
    b.consumed(0)
    b.add([], cp("a", resume_offset=0))  # an open session holds the offset at 0
    b.committed(b.plan())
    b.consumed(1)
    b.add_letter(letter(1), 1)
    plan = b.plan()
    assert (plan.offset, plan.advance, plan.mark) == (0, True, Mark(2))
    b.committed(plan)
    b.consumed(2)
    assert not b.plan().advance  # nothing new was dead-lettered: the committed mark still holds


def test_the_next_owner_does_not_dead_letter_what_the_mark_covers() -> None:
    b = CommitBook.resumed(0, SESSIONS, 3, {}, Mark(7, frozenset({9})))
    assert [o for o in range(12) if b.lettered(o)] == [0, 1, 2, 3, 4, 5, 6, 9]
    assert CommitBook.resumed(0, SESSIONS, 3, {}).lettered(2)  # below the offset: never read again
    assert not CommitBook.resumed(0, SESSIONS, 3, {}).lettered(3)


def test_the_mark_never_falls_below_the_inherited_one() -> None:
    b = CommitBook.resumed(0, SESSIONS, 3, {}, Mark(7, frozenset({9, 5})))
    b.consumed(3)
    b.add_letter(letter(11), 11)
    assert b.plan().mark == Mark(7, frozenset({9, 11}))  # 5 is below 7: covered by ``handled``


def test_records_not_decided_yet_keep_the_mark_below_them_and_later_letters_are_listed() -> None:
    b = book()
    b.consumed(0)
    b.undecided(1)  # deferred for a session slot: read again later
    b.consumed(1)
    b.consumed(2)
    b.add_letter(letter(3), 3)
    b.consumed(3)
    plan = b.plan()
    assert (plan.offset, plan.mark) == (1, Mark(1, frozenset({3})))
    b.committed(plan)
    b.add_letter(letter(1), 1)  # decided now, on the re-read
    b.undecided(None)
    plan = b.plan()
    assert (plan.offset, plan.mark) == (4, Mark(4))


def test_a_failed_plan_leaves_its_dead_letters_needing_the_mark() -> None:
    b = book()
    b.add([], cp("a", resume_offset=0))
    b.committed(b.plan())
    b.add_letter(letter(0), 0)
    b.consumed(0)
    b.failed(b.plan())
    plan = b.plan()
    assert plan.advance and plan.mark == Mark(1) and plan.records == (letter(0),)


def test_a_mark_lists_a_bounded_number_of_letters() -> None:
    b = book()
    b.undecided(0)
    for offset in range(1, 200):
        b.add_letter(letter(offset), offset)
        b.consumed(offset)
    mark = b.plan().mark
    assert mark.handled == 0 and len(mark.lettered) == MARK_LETTERED_MAX
    assert len(mark.metadata()) < 4096  # Kafka's default offset.metadata.max.bytes


def test_mark_metadata_is_small_versioned_json() -> None:
    assert Mark(12).metadata() == '{"v":1,"handled":12}'
    assert Mark(12, frozenset({20, 14})).metadata() == '{"v":1,"handled":12,"lettered":[14,20]}'


@pytest.mark.parametrize(
    "metadata",
    [
        "",
        None,
        "not json",
        "[]",
        '{"handled":3}',
        '{"v":2,"handled":3}',
        '{"v":1}',
        '{"v":1,"handled":-1}',
        '{"v":1,"handled":"3"}',
        '{"v":1,"handled":true}',
        '{"v":1,"handled":3,"lettered":[4,"5"]}',
        '{"v":1,"handled":3,"lettered":5}',
    ],
)
def test_metadata_this_version_does_not_know_reads_as_no_mark(metadata: str | None) -> None:
    assert Mark.read(metadata) is None


@given(st.integers(0, 2**63 - 1), st.frozensets(st.integers(0, 2**63 - 1), max_size=MARK_LETTERED_MAX))
def test_a_mark_reads_back_as_written(handled: int, lettered: frozenset[int]) -> None:
    assert Mark.read(Mark(handled, lettered).metadata()) == Mark(handled, lettered)


@given(st.text(max_size=200))
def test_any_metadata_reads_without_raising(metadata: str) -> None:
    mark = Mark.read(metadata)
    assert mark is None or mark.handled >= 0


class LetterMachine(RuleBasedStateMachine):
    """The input log is fixed once written: after a crash the next owner reads the same records again
    from the committed offset. Open sessions hold the offset back, some records wait (deferred) and
    are decided later, plans commit, abort, or the worker crashes with one in flight. Every bad record
    ends with exactly one committed dead letter; none is ever committed twice."""

    KINDS = ("plain", "bad", "open", "defer", "defer_bad")

    def __init__(self) -> None:
        super().__init__()
        self.log: list[str] = []  # the kind of the record at each input offset
        self.offset = 0  # committed
        self.metadata = ""  # committed with it
        self.letters: dict[int, int] = {}  # input offset → dead letters committed for it
        self._resume()

    def _resume(self) -> None:
        self.book = CommitBook.resumed(0, SESSIONS, self.offset, {}, Mark.read(self.metadata))
        self.pos = self.offset
        self.open: set[int] = set()
        self.deferred: set[int] = set()
        self.inflight: CommitPlan | None = None

    def _decide(self, offset: int) -> None:
        if self.log[offset] in ("bad", "defer_bad") and not self.book.lettered(offset):
            self.book.add_letter(letter(offset), offset)

    def _read(self, kind: str) -> None:
        offset = self.pos
        if offset == len(self.log):
            self.log.append(kind)
        kind = self.log[offset]
        self.pos += 1
        if kind == "open":
            self.book.hold(("session", offset), offset)
            self.open.add(offset)
        elif kind.startswith("defer"):
            self.deferred.add(offset)
        else:
            self._decide(offset)
        self.book.undecided(min(self.deferred, default=None))
        self.book.consumed(offset)

    @rule(kind=st.sampled_from(KINDS))
    def read(self, kind: str) -> None:
        """The next record: replayed if the log has it already, else a new one of ``kind``."""
        self._read(kind)

    @precondition(lambda self: self.deferred)
    @rule(pick=st.integers(0, 50))
    def decide_deferred(self, pick: int) -> None:
        offset = sorted(self.deferred)[pick % len(self.deferred)]
        self.deferred.discard(offset)
        self._decide(offset)
        self.book.undecided(min(self.deferred, default=None))

    @precondition(lambda self: self.open)
    @rule(pick=st.integers(0, 50))
    def end_session(self, pick: int) -> None:
        offset = sorted(self.open)[pick % len(self.open)]
        self.open.discard(offset)
        self.book.release(("session", offset))

    @precondition(lambda self: self.inflight is None)
    @rule()
    def plan(self) -> None:
        plan = self.book.plan()
        self.inflight = plan
        assert plan.offset <= plan.mark.handled <= len(self.log)
        in_plan = {int(r.value or b"") for r in plan.records}
        for offset, kind in enumerate(self.log):
            if plan.mark.covers(offset) and kind in ("bad", "defer_bad"):
                assert offset in in_plan or self.letters.get(offset), f"the mark covers {offset}, not lettered"

    def _apply(self, plan: CommitPlan) -> None:
        for record in plan.records:
            offset = int(record.value or b"")
            self.letters[offset] = self.letters.get(offset, 0) + 1
            assert self.letters[offset] == 1, f"the record at {offset} was dead-lettered twice"
        if plan.advance:
            self.offset, self.metadata = plan.offset, plan.mark.metadata()
        elif plan.records:
            raise AssertionError("dead letters committed without the mark")

    @precondition(lambda self: self.inflight is not None)
    @rule()
    def commit(self) -> None:
        assert self.inflight is not None
        plan, self.inflight = self.inflight, None
        self._apply(plan)
        self.book.committed(plan)

    @precondition(lambda self: self.inflight is not None)
    @rule()
    def abort(self) -> None:
        assert self.inflight is not None
        plan, self.inflight = self.inflight, None
        self.book.failed(plan)

    @rule(committed=st.booleans())
    def crash(self, committed: bool) -> None:
        """kill -9: the plan in flight committed or not; the next owner resumes from what Kafka holds."""
        if self.inflight is not None and committed:
            self._apply(self.inflight)
        self._resume()

    def teardown(self) -> None:
        """Read the whole log to its end, decide everything: every bad record has exactly one letter."""
        if self.inflight is not None:
            self.commit()
        while self.pos < len(self.log):
            self._read("plain")
        while self.deferred:
            self.decide_deferred(0)
        for _ in range(2):
            self.plan()
            self.commit()
        bad = {o for o, kind in enumerate(self.log) if kind in ("bad", "defer_bad")}
        assert self.letters == dict.fromkeys(bad, 1)


TestLetterMachine = LetterMachine.TestCase
TestLetterMachine.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
