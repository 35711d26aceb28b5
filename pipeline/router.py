"""Where each input record goes: one decision per record, pure (no asyncio, no Kafka client).

For every `stt.audio` record the worker asks :meth:`Router.route` and gets a :class:`Route`:

``DELIVER``    to the session that is open for its key;
``OPEN``       a new session (an audio chunk for an unknown key);
``RESUME``     a checkpointed session, continued after a restart (record at or after its resume offset);
``SKIP``       nothing to do: read before (``handled``), input of a session that already ended
               (``finished``), or input transcribed before a restart (``below_resume``);
``DUPLICATE``  a `seq` the session already had;
``REJECT``     to the dead-letter topic, with a reason;
``DEFER``      the worker's session cap is reached. Only this key waits: the record's offset is
               remembered, later records of the same key wait behind it, and records of open
               sessions keep flowing. When a slot frees, :meth:`Router.rewind` says where to re-read
               from; the re-read delivers the deferred records and skips everything else already read.

Deferral never starves open sessions and never loses a record: a deferred offset holds the
partition's watermark (:meth:`Router.deferred_floor`), so it is committed only once handled.
"""

from __future__ import annotations

import bisect
import enum
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.contract import Checkpoint
from pipeline.records import AudioFormat, InputMessage


class Decision(enum.Enum):
    DELIVER = "deliver"
    OPEN = "open"
    RESUME = "resume"
    SKIP = "skip"
    DUPLICATE = "duplicate"
    REJECT = "reject"
    DEFER = "defer"


@dataclass(frozen=True, slots=True)
class Route:
    decision: Decision
    reason: str = ""  # SKIP: handled | finished | below_resume; REJECT: the dead-letter reason
    detail: str = ""
    format: AudioFormat | None = None  # OPEN
    checkpoint: Checkpoint | None = None  # RESUME


_HANDLED = Route(Decision.SKIP, "handled")
_FINISHED = Route(Decision.SKIP, "finished")
_BELOW_RESUME = Route(Decision.SKIP, "below_resume")
_DUPLICATE = Route(Decision.DUPLICATE)
_DELIVER = Route(Decision.DELIVER)
_DEFER = Route(Decision.DEFER)


@dataclass
class _Input:
    """What the router knows of one partition's input."""

    frontier: int  # every record below this was read (and handled or deferred) before
    deferred: dict[int, str] = field(default_factory=dict)  # offset → session id
    waiting: dict[str, list[int]] = field(default_factory=dict)  # session id → its deferred offsets, ascending

    def defer(self, offset: int, session_id: str) -> None:
        if offset not in self.deferred:
            self.deferred[offset] = session_id
            bisect.insort(self.waiting.setdefault(session_id, []), offset)

    def undefer(self, offset: int) -> None:
        session_id = self.deferred.pop(offset, None)
        if session_id is not None:
            offsets = self.waiting[session_id]
            offsets.remove(offset)
            if not offsets:
                del self.waiting[session_id]

    def waits_before(self, session_id: str, offset: int) -> bool:
        offsets = self.waiting.get(session_id)
        return offsets is not None and offsets[0] < offset  # present only while non-empty


class Router:
    """Routing state of one worker: which sessions are open, ended, or waiting for a slot."""

    def __init__(self, max_sessions: int, completed_memory: int = 100_000) -> None:
        self.max_sessions = max_sessions
        self.completed_memory = completed_memory
        self.open: dict[str, int] = {}  # session id → input partition
        self._completed: OrderedDict[str, int] = OrderedDict()  # session id → last input seq
        self._inputs: dict[int, _Input] = {}

    # -- partitions ------------------------------------------------------------------------------

    def assign(self, partition: int, position: int) -> None:
        """A partition is ours from ``position`` on (nothing below it was read by us)."""
        self._inputs[partition] = _Input(position)

    def unassign(self, partition: int) -> None:
        self._inputs.pop(partition, None)
        for session_id in [s for s, p in self.open.items() if p == partition]:
            del self.open[session_id]

    # -- the decision ----------------------------------------------------------------------------

    def seen(self, partition: int, offset: int) -> bool:
        """Whether the record was read before and needs nothing more (checked before parsing it)."""
        state = self._inputs[partition]
        return offset < state.frontier and offset not in state.deferred

    def read(self, partition: int, offset: int) -> None:
        """A record was read and handled without routing (e.g. it could not even be decoded)."""
        state = self._inputs[partition]
        state.undefer(offset)
        state.frontier = max(state.frontier, offset + 1)

    def route(
        self,
        partition: int,
        offset: int,
        message: InputMessage,
        checkpoint_of: Callable[[str], Checkpoint | None],
    ) -> Route:
        """Decide one parsed record. ``checkpoint_of`` looks up the partition's checkpoints."""
        state = self._inputs[partition]
        if offset < state.frontier and offset not in state.deferred:
            return _HANDLED
        route = self._decide(state, partition, offset, message, checkpoint_of)
        if route.decision is Decision.DEFER:
            state.defer(offset, message.session_id)
        else:
            state.undefer(offset)
        state.frontier = max(state.frontier, offset + 1)
        return route

    def _decide(
        self,
        state: _Input,
        partition: int,
        offset: int,
        message: InputMessage,
        checkpoint_of: Callable[[str], Checkpoint | None],
    ) -> Route:
        session_id = message.session_id
        if session_id in self.open:
            return _DELIVER
        if state.waits_before(session_id, offset):
            return _DEFER  # an earlier record of this key is waiting: keep the key's order
        checkpoint = checkpoint_of(session_id)
        if checkpoint is not None and checkpoint.status != "open":
            close = checkpoint.close_offset
            if close is not None and offset <= close:
                return _FINISHED
            if message.seq < checkpoint.next_input_seq:
                return _DUPLICATE
            return Route(Decision.REJECT, "after_end", f"session {session_id!r} already ended ({checkpoint.status})")
        if checkpoint is not None:
            if offset < checkpoint.resume_offset:
                return _BELOW_RESUME
            return Route(Decision.RESUME, checkpoint=checkpoint) if self._slot_free() else _DEFER
        if session_id in self._completed:
            if message.seq <= self._completed[session_id]:
                return _DUPLICATE
            return Route(Decision.REJECT, "after_end", f"session {session_id!r} already ended")
        if message.type != "audio" or message.format is None:
            return Route(Decision.REJECT, "no_session", f"a `{message.type}` record for a session that sent no audio")
        return Route(Decision.OPEN, format=message.format) if self._slot_free() else _DEFER

    def _slot_free(self) -> bool:
        return len(self.open) < self.max_sessions

    # -- session lifecycle -----------------------------------------------------------------------

    def opened(self, session_id: str, partition: int) -> None:
        if session_id in self.open:
            raise ValueError(f"session {session_id!r} is open already")
        self.open[session_id] = partition

    def ended(self, session_id: str, last_seq: int) -> None:
        """A session ended: later records of its key are duplicates or after its end."""
        self.open.pop(session_id, None)
        self._completed[session_id] = last_seq
        self._completed.move_to_end(session_id)
        while len(self._completed) > self.completed_memory:
            self._completed.popitem(last=False)

    def forget(self, session_id: str) -> None:
        """A session left with its partition (revoked or fenced): its new owner resumes it."""
        self.open.pop(session_id, None)

    # -- deferral --------------------------------------------------------------------------------

    def deferred_floor(self, partition: int) -> int | None:
        """The lowest deferred offset of the partition: the watermark must not pass it."""
        deferred = self._inputs[partition].deferred
        return min(deferred) if deferred else None

    def deferred(self, partition: int) -> int:
        return len(self._inputs[partition].deferred)

    def rewind(self, partition: int) -> int | None:
        """Where to re-read from now that a slot may be free (None: nothing waits, or no slot)."""
        if not self._slot_free():
            return None
        return self.deferred_floor(partition)

    def frontier(self, partition: int) -> int:
        return self._inputs[partition].frontier
