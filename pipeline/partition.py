"""One assigned input partition as an explicit state machine (pure: no asyncio, no Kafka client).

The worker owns one :class:`Partition` per assigned `stt.audio` partition. It feeds it what the
consumer observed (fetch answers, fetched records, connection loss, lag, queued audio) and the group's
decisions (revoke, keep, release), and reads back one thing above all: :attr:`Partition.live`,
whether a quiet partition means a quiet speaker, so that a session's pacer may fill silence.

States (:class:`PartitionState`), the most restrictive condition wins:

``ASSIGNED``      set up (or given back by a rebalance); no fetch has answered since.
``LIVE``          fetches answer and the consumer is at the end: quiet input is a quiet speaker.
``LAGGING``       more than ``lag_threshold`` records behind the high watermark.
``CATCHING_UP``   re-reading records handled before (kept across a rebalance, or re-reading records a
                  full session cap deferred) until the consumer is back at ``catch_up_to``.
``RECOVERING``    Kafka answers again after an outage. Producers reconnect on their own schedule, so
                  the partition stays not live for ``recovery_grace_s`` (records keep flowing meanwhile;
                  only silence fill waits).
``DISCONNECTED``  no fetch answer for ``fetch_silence_ms``, the consumer lost its connection, or the
                  worker's own transaction hangs (Kafka refuses writes: so do the producers').
``PAUSED``        backpressure: the sessions hold more than ``pause_high_bytes`` of queued audio.
``REVOKING``      revoked by the group, committed and frozen: no commits until the next assignment
                  says whether it stays (:meth:`Partition.keep`) or goes (:meth:`Partition.release`).
``RELEASED``      gone; terminal.

Only ``LIVE`` is live. Transitions are methods; every change of state is checked against
:data:`ALLOWED`, and an event that is illegal in the current state raises :class:`IllegalTransition`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pipeline.errors import IllegalTransition


class PartitionState(enum.Enum):
    ASSIGNED = "assigned"
    LIVE = "live"
    LAGGING = "lagging"
    CATCHING_UP = "catching_up"
    RECOVERING = "recovering"
    DISCONNECTED = "disconnected"
    PAUSED = "paused"
    REVOKING = "revoking"
    RELEASED = "released"


S = PartitionState
_FLOWING = frozenset({S.ASSIGNED, S.LIVE, S.LAGGING, S.CATCHING_UP, S.RECOVERING, S.DISCONNECTED, S.PAUSED})
ALLOWED: dict[PartitionState, frozenset[PartitionState]] = {
    # Connection and flow conditions come and go in any order while the partition is owned.
    **{state: _FLOWING | {S.REVOKING, S.RELEASED} for state in _FLOWING},
    S.REVOKING: frozenset({S.CATCHING_UP, S.RELEASED}),
    S.RELEASED: frozenset(),
}


class _Link(enum.Enum):
    """What the consumer's fetches say about the link to this partition's leader."""

    UNKNOWN = "unknown"  # no answer since assignment
    UP = "up"
    DOWN = "down"
    RECOVERING = "recovering"


@dataclass(frozen=True, slots=True)
class FlowLimits:
    """The settings the partition's conditions are judged by."""

    fetch_silence_ms: float = 250.0
    recovery_grace_s: float = 5.0
    lag_threshold: int = 20
    pause_high_bytes: int = 32 * 2**20
    pause_low_bytes: int = 8 * 2**20


class FlowAction(enum.Enum):
    """What the worker must tell the consumer after :meth:`Partition.observe_queued`."""

    NONE = "none"
    PAUSE = "pause"
    RESUME = "resume"


class Partition:
    """See the module docstring. ``number`` is the partition; times are monotonic seconds."""

    def __init__(self, number: int, limits: FlowLimits, now: float) -> None:
        self.number = number
        self.limits = limits
        self.state = S.ASSIGNED
        self.transitions = 0
        self.catch_up_to: int | None = None
        self._link = _Link.UNKNOWN
        self._answered = False  # a fetch answered since the (re)assignment
        self._recovering_since = now
        self._lagging = False
        self._paused = False
        self._write_stalled = False
        self._frozen_at: float | None = None

    # -- what the worker reads -------------------------------------------------------------------

    @property
    def live(self) -> bool:
        """Whether a quiet partition means a quiet speaker (silence may be filled)."""
        return self.state is S.LIVE

    @property
    def owned(self) -> bool:
        """Still assigned and not frozen: its sessions may commit."""
        return self.state in _FLOWING

    @property
    def paused(self) -> bool:
        return self._paused

    # -- consumer observations -------------------------------------------------------------------

    def fetch_answered(self, now: float, answered_ms_ago: float, *, connected: bool = True) -> None:
        """The consumer's view of this partition's fetches: how long ago one last answered without
        error, and whether the consumer holds its connections. Called every consume-loop turn."""
        self._require_owned_or_frozen("fetch_answered")
        if not connected or answered_ms_ago > self.limits.fetch_silence_ms:
            self._link = _Link.DOWN
            self._settle()
            return
        self._answered = True
        if self._link is _Link.DOWN:
            self._link = _Link.RECOVERING
            self._recovering_since = now
        elif self._link is _Link.UNKNOWN or (
            self._link is _Link.RECOVERING and now - self._recovering_since >= self.limits.recovery_grace_s
        ):
            self._link = _Link.UP
        self._settle()

    def disconnected(self) -> None:
        """The consumer saw the link fail (a fetch error, a lost connection, the coordinator gone)."""
        self._require_owned_or_frozen("disconnected")
        self._link = _Link.DOWN
        self._settle()

    def write_stalled(self) -> None:
        """The worker's own transaction to Kafka has hung for longer than ``fetch_silence_ms``: Kafka is
        not taking writes, so the producers upstream are most likely blocked too. Fetches may still
        answer meanwhile (a broker shutting down serves reads but refuses ``acks=all`` writes)."""
        self._require_owned_or_frozen("write_stalled")
        self._write_stalled = True
        self._settle()

    def write_ok(self, now: float) -> None:
        """The worker's transaction finished (committed or failed). After a stall, the partition
        recovers like after an outage: live again after ``recovery_grace_s``."""
        self._require_owned_or_frozen("write_ok")
        if self._write_stalled:
            self._write_stalled = False
            if self._link is not _Link.DOWN:
                self._link = _Link.RECOVERING
                self._recovering_since = now
        self._settle()

    def records_fetched(self, now: float) -> None:
        """A fetch returned records for this partition. That ends the wait for a first answer, but not a
        recovery: records fetched right after an outage may have been written before it, or be the
        backlog of one producer while others are still reconnecting. Only ``recovery_grace_s`` does."""
        self._require_owned_or_frozen("records_fetched")
        if self._link is _Link.UNKNOWN:
            self._link = _Link.UP
        self._answered = True
        self._settle()

    def observe_lag(self, behind: int | None) -> None:
        """Records between the consumer's position and the high watermark (None: not known yet)."""
        self._require_owned_or_frozen("observe_lag")
        self._lagging = behind is not None and behind > self.limits.lag_threshold
        self._settle()

    def observe_queued(self, queued_bytes: int) -> FlowAction:
        """The audio the partition's sessions have queued; pause above the high mark, resume below the low."""
        self._require_owned("observe_queued")
        action = FlowAction.NONE
        if not self._paused and queued_bytes > self.limits.pause_high_bytes:
            self._paused, action = True, FlowAction.PAUSE
        elif self._paused and queued_bytes < self.limits.pause_low_bytes:
            self._paused, action = False, FlowAction.RESUME
        self._settle()
        return action

    def catch_up(self, target: int) -> None:
        """Records below ``target`` were handled before and are being read again: not live until back."""
        self._require_owned("catch_up")
        self.catch_up_to = target if self.catch_up_to is None else max(self.catch_up_to, target)
        self._settle()

    def position_reached(self, position: int) -> None:
        """The consumer's position; ends a catch-up once it is back at its target."""
        self._require_owned_or_frozen("position_reached")
        # aiokafka resets the position to the committed offset after the assignment callback, so the
        # position is only trustworthy once a fetch has answered since.
        if self.catch_up_to is not None and self._answered and position >= self.catch_up_to:
            self.catch_up_to = None
        self._settle()

    # -- group decisions -------------------------------------------------------------------------

    def revoke(self, now: float) -> None:
        """Revoked (eager rebalancing revokes everything): frozen after the worker's last commit."""
        self._require_owned("revoke")
        self._move(S.REVOKING, "revoke")
        self._frozen_at = now

    def keep(self, position: int) -> None:
        """The next assignment gave the partition back; the fetcher re-reads from the committed
        offset, so it catches up to ``position`` (where the worker was) before it is live again."""
        self._require(S.REVOKING, "keep")
        self.catch_up_to = position
        self._link = _Link.UNKNOWN  # only a fetch answered after the rebalance says where the consumer is
        self._answered = False
        self._paused = False  # the consumer forgets pauses across a rebalance
        self._frozen_at = None
        self._move(S.CATCHING_UP, "keep")

    def release(self) -> None:
        """Lost to another worker, or handed off at shutdown."""
        self._require_owned_or_frozen("release")
        self._move(S.RELEASED, "release")

    # -- machinery -------------------------------------------------------------------------------

    def _settle(self) -> None:
        if self.state in (S.REVOKING, S.RELEASED):
            return
        self._move(self._derived(), "settle")

    def _derived(self) -> PartitionState:
        if self._paused:
            return S.PAUSED
        if self._link is _Link.DOWN or self._write_stalled:
            return S.DISCONNECTED
        if self.catch_up_to is not None:
            return S.CATCHING_UP
        if self._link is _Link.RECOVERING:
            return S.RECOVERING
        if self._lagging:
            return S.LAGGING
        if self._link is _Link.UNKNOWN:
            return S.ASSIGNED
        return S.LIVE

    def _move(self, to: PartitionState, event: str) -> None:
        if to is self.state:
            return
        if to not in ALLOWED[self.state]:
            raise IllegalTransition("partition", self.state.value, f"{event} → {to.value}")
        self.state = to
        self.transitions += 1

    def _require(self, state: PartitionState, event: str) -> None:
        if self.state is not state:
            raise IllegalTransition("partition", self.state.value, event)

    def _require_owned(self, event: str) -> None:
        if not self.owned:
            raise IllegalTransition("partition", self.state.value, event)

    def _require_owned_or_frozen(self, event: str) -> None:
        if self.state is S.RELEASED:
            raise IllegalTransition("partition", self.state.value, event)
