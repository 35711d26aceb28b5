"""What one transaction of an input partition carries, decided in one synchronous step (pure).

A partition's transaction commits three things atomically: output records (turn events, transcripts,
dead letters), the checkpoints of its sessions (`stt.sessions`) and the input offset (its watermark).
The rule that makes crash recovery exact is: **a committed checkpoint accounts for exactly the
records committed with it or before it.** A checkpoint that counted an output still waiting elsewhere
would let a crash lose that output for good.

:class:`CommitBook` makes the rule structural. The only way a checkpoint enters the book is
:meth:`CommitBook.add`, together with the records produced up to the same instant (a session hands
both over from one synchronous call). :meth:`CommitBook.plan` then takes everything added since the
last plan, the changed checkpoints and the watermark, also synchronously, as a :class:`CommitPlan`.
So every checkpoint in a plan is preceded, in that plan or an earlier one, by every record it counts.

Records may be sent at commit time (the plan carries them) or eagerly, inside the partition's open
transaction, as soon as they are added (:meth:`CommitBook.to_send`, as Kafka Streams does): the
plan's first ``sent`` records are then those already sent in the open transaction, and only the rest
(added since the last eager send) are sent with the checkpoints. Nothing is sent eagerly while a plan
is in flight: those records belong to the next transaction. Either way, an aborted plan
(:meth:`CommitBook.failed`) puts all its records back in front of anything added since, to be sent
again into the next transaction, and its checkpoints are offered again by the next plan.

The book also owns the partition's :class:`~pipeline.offsets.PartitionWatermark`: an open session's
checkpoint holds the watermark at its resume offset, a finished one releases it, and other holders
(dormant checkpoints, deferred records) are named explicitly.

**Dead letters are written once, also across a crash.** The committed offset stays at the lowest
resume offset of the open sessions, so a crash makes the next owner re-read records whose dead letters
were committed already. So each offset commit also carries the partition's :class:`Mark` (as the
commit's metadata): every input offset below ``handled`` was decided, and its dead letter, if it
needed one, is in that transaction or an earlier committed one. Records read but not decided yet
(deferred for a session slot, :meth:`CommitBook.undecided`) keep ``handled`` below them; dead letters
of later records are listed in ``lettered`` instead. The next owner reads the mark back
(:meth:`CommitBook.resumed`) and does not dead-letter a replayed record it covers again
(:meth:`CommitBook.lettered`). A plan that carries a dead letter (:meth:`CommitBook.add_letter`)
always commits the offset with the mark, even when the offset did not move.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeGuard

import orjson

from pipeline.contract import Checkpoint
from pipeline.offsets import PartitionWatermark

MARK_VERSION = 1
MARK_LETTERED_MAX = 64  # dead-lettered offsets above ``handled`` one mark lists at most (more may repeat)
_UNDECIDED = "undecided"  # the watermark hold of records read but not decided yet


def _offset(value: object) -> TypeGuard[int]:
    return type(value) is int and value >= 0


@dataclass(frozen=True, slots=True)
class Mark:
    """How far a partition's input was handled, committed with its offset as the commit's metadata.

    Every input offset below ``handled``, and each one in ``lettered`` (dead-lettered while an earlier
    record was still deferred), was decided, and its dead letter, if it needed one, is committed."""

    handled: int
    lettered: frozenset[int] = frozenset()

    def covers(self, offset: int) -> bool:
        return offset < self.handled or offset in self.lettered

    def metadata(self) -> str:
        """``{"v":1,"handled":<offset>}``, with ``"lettered":[<offset>,…]`` when there are any: compact
        JSON, at most about 1.4 KB, under Kafka's default ``offset.metadata.max.bytes`` (4096)."""
        value: dict[str, object] = {"v": MARK_VERSION, "handled": self.handled}
        if self.lettered:
            value["lettered"] = sorted(self.lettered)
        return orjson.dumps(value).decode()

    @classmethod
    def read(cls, metadata: str | None) -> Mark | None:
        """The mark in an offset commit's metadata; None when there is none this version knows (empty,
        written by another tool or another version, malformed): then nothing above the committed
        offset is known to be dead-lettered."""
        if not metadata:
            return None
        try:
            value = orjson.loads(metadata)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(value, dict) or value.get("v") != MARK_VERSION:
            return None
        handled, lettered = value.get("handled"), value.get("lettered", [])
        if not _offset(handled) or not isinstance(lettered, list) or not all(_offset(o) for o in lettered):
            return None
        return cls(handled, frozenset(lettered))


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One output record: ``value`` None is a tombstone; ``partition`` None lets the producer choose."""

    topic: str
    key: str | None
    value: bytes | None
    partition: int | None = None
    created_at: float = 0.0  # monotonic time the record came to exist (latency metrics)
    close_sent_at: float | None = None  # a session's final: when its close command went out


@dataclass(frozen=True, slots=True)
class CommitPlan:
    """One transaction: ``records`` first, then ``checkpoints`` (None: a tombstone), then ``offset``
    with the ``mark`` as its metadata (only when ``advance``).

    The first ``sent`` records were already sent eagerly into the open transaction."""

    records: tuple[OutRecord, ...]
    checkpoints: tuple[tuple[str, Checkpoint | None], ...]
    offset: int
    advance: bool  # whether the offset is committed: it moved, or dead letters need the mark with them
    sent: int = 0
    mark: Mark = Mark(0)

    @property
    def unsent(self) -> tuple[OutRecord, ...]:
        return self.records[self.sent :]

    @property
    def empty(self) -> bool:
        return not self.records and not self.checkpoints and not self.advance


def _same(a: Checkpoint | None, b: Checkpoint | None) -> bool:
    """Equal apart from the time stamp."""
    if a is b:  # the committed checkpoint of a session that produced nothing since
        return True
    if a is None or b is None:
        return False
    return replace(a, at=0) == replace(b, at=0)


@dataclass
class CommitBook:
    """The commit state of one input partition (see the module docstring)."""

    partition: int
    sessions_topic: str
    watermark: PartitionWatermark
    committed_offset: int | None = None
    inherited: Mark = Mark(0)  # the mark committed by a previous owner (read back at assignment)
    _undecided: int | None = None  # the lowest offset read but not decided yet
    _letters: bool = False  # dead letters were added since the last plan: the next one commits the mark
    _lettered: set[int] = field(default_factory=set)  # dead-lettered offsets the mark may not cover yet
    _pending: list[OutRecord] = field(default_factory=list)
    _sent: int = 0  # leading ``_pending`` records already sent into the open transaction
    _latest: dict[str, Checkpoint] = field(default_factory=dict)
    _committed: dict[str, Checkpoint] = field(default_factory=dict)
    _inflight: CommitPlan | None = None

    @classmethod
    def resumed(
        cls,
        partition: int,
        sessions_topic: str,
        position: int,
        checkpoints: Mapping[str, Checkpoint],
        mark: Mark | None = None,
    ) -> CommitBook:
        """A freshly assigned partition: ``checkpoints`` as read back from `stt.sessions`, ``mark`` as
        committed with the offset ``position`` (None: none)."""
        handled = position if mark is None else max(position, mark.handled)
        lettered = frozenset() if mark is None else frozenset(o for o in mark.lettered if o >= handled)
        book = cls(partition, sessions_topic, PartitionWatermark(position), committed_offset=position)
        book.inherited = Mark(handled, lettered)
        book._lettered = set(lettered)  # carried on into this owner's marks
        book._latest = dict(checkpoints)
        book._committed = dict(checkpoints)
        for session_id, checkpoint in checkpoints.items():
            if checkpoint.status == "open":
                book.watermark.hold(session_id, checkpoint.resume_offset)
        return book

    # -- what goes in ----------------------------------------------------------------------------

    def add(self, records: Sequence[OutRecord], checkpoint: Checkpoint | None = None) -> None:
        """Records, and optionally the checkpoint of the session that produced them as of the same instant.

        Records added while a plan is in flight belong to the next plan."""
        self._pending.extend(records)
        if checkpoint is not None:
            session_id = checkpoint.session_id
            self._latest[session_id] = checkpoint
            if checkpoint.status == "open":
                self.watermark.hold(session_id, checkpoint.resume_offset)
            else:
                self.watermark.release(session_id)

    def add_letter(self, letter: OutRecord, offset: int) -> None:
        """The dead letter of the input record at ``offset``, decided just now (before the record counts
        as consumed): the next plan commits the mark with it."""
        self._pending.append(letter)
        self._letters = True
        if len(self._lettered) < MARK_LETTERED_MAX:
            self._lettered.add(offset)

    def lettered(self, offset: int) -> bool:
        """Whether a previous owner handled the record at ``offset``: its dead letter, if it needed one,
        is committed already, so a replay must not dead-letter it again."""
        return self.inherited.covers(offset)

    def undecided(self, offset: int | None) -> None:
        """Records from ``offset`` on may have been read without being decided (deferred: they are read
        again later); None: every record read is decided. Holds the watermark, and the mark's
        ``handled`` stays below it."""
        self._undecided = offset
        if offset is None:
            self.watermark.release(_UNDECIDED)
        else:
            self.watermark.hold(_UNDECIDED, offset)

    def mark(self) -> Mark:
        """The mark as of now: what it covers was decided by this owner (its dead letters are committed
        or wait in this book) or by a previous one (:attr:`inherited`)."""
        handled = self.watermark.position
        if self._undecided is not None:
            handled = min(handled, self._undecided)
        handled = max(self.inherited.handled, handled)
        return Mark(handled, frozenset(o for o in self._lettered if o >= handled))

    def hold(self, key: Hashable, offset: int) -> None:
        """Something other than a session's checkpoint needs input from ``offset`` on."""
        self.watermark.hold(key, offset)

    def release(self, key: Hashable) -> None:
        self.watermark.release(key)

    def consumed(self, offset: int) -> None:
        self.watermark.consumed(offset)

    def checkpoint(self, session_id: str) -> Checkpoint | None:
        """The latest known checkpoint of a session of this partition."""
        return self._latest.get(session_id)

    def checkpoints(self) -> Mapping[str, Checkpoint]:
        return self._latest

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def unsent(self) -> int:
        """Records added but not yet sent (eagerly or by a plan)."""
        return len(self._pending) - self._sent

    @property
    def in_flight(self) -> bool:
        return self._inflight is not None

    def to_send(self) -> list[OutRecord]:
        """Eager mode: the records to send into the open transaction now, i.e. those added since the
        last call. Nothing while a plan is in flight: those records wait for the next transaction."""
        if self._inflight is not None or self._sent == len(self._pending):
            return []
        batch = self._pending[self._sent :]
        self._sent = len(self._pending)
        return batch

    # -- the transaction -------------------------------------------------------------------------

    def plan(self) -> CommitPlan:
        """Take the next transaction, synchronously: records added so far, changed checkpoints
        (tombstones for finished sessions the committed offset has passed), the watermark and the
        mark."""
        if self._inflight is not None:
            raise RuntimeError(f"partition {self.partition}: a plan is already in flight")
        offset = self.watermark.committable()
        checkpoints: list[tuple[str, Checkpoint | None]] = []
        for session_id, checkpoint in self._latest.items():
            committed = self._committed.get(session_id)
            same = _same(committed, checkpoint)
            close = checkpoint.close_offset
            if checkpoint.status != "open" and same and close is not None and close < offset:
                checkpoints.append((session_id, None))
            elif not same:
                checkpoints.append((session_id, checkpoint))
        advance = offset != self.committed_offset or self._letters
        mark = self.mark()
        plan = CommitPlan(tuple(self._pending), tuple(checkpoints), offset, advance, self._sent, mark)
        self._pending = []
        self._sent = 0
        self._letters = False
        self._lettered = set(mark.lettered)  # those below ``handled`` are covered by it from now on
        self._inflight = plan
        return plan

    def committed(self, plan: CommitPlan) -> None:
        """``plan`` committed: its checkpoints are what `stt.sessions` now holds."""
        self._finish(plan)
        for session_id, checkpoint in plan.checkpoints:
            if checkpoint is None:
                self._committed.pop(session_id, None)
                self._latest.pop(session_id, None)  # finished, and the committed offset is past it
            else:
                self._committed[session_id] = checkpoint
        self.committed_offset = plan.offset

    def failed(self, plan: CommitPlan, quarantine: Collection[int] = ()) -> list[OutRecord]:
        """``plan`` aborted: its records (sent eagerly or not) go back in front, unsent, except those at
        the ``quarantine`` indexes (records Kafka refuses for themselves), which are returned;
        checkpoints are offered again."""
        self._finish(plan)
        kept = [r for i, r in enumerate(plan.records) if i not in quarantine]
        self._pending = kept + self._pending
        self._sent = 0  # nothing is sent while a plan is in flight
        self._letters = self._letters or plan.advance  # its dead letters, if any, still need the mark
        return [r for i, r in enumerate(plan.records) if i in quarantine]

    def _finish(self, plan: CommitPlan) -> None:
        if self._inflight is not plan:
            raise RuntimeError(f"partition {self.partition}: that plan is not the one in flight")
        self._inflight = None
