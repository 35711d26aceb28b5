"""Liveness and readiness of a worker, decided from a :class:`~pipeline.snapshot.WorkerSnapshot` (pure).

Ready means: the consumer has joined the group, its assignment is settled (no partition catching up or
revoking; zero partitions is a settled assignment), the broker is reachable, and STT was reachable
within ``stt_window_s``: a worker whose STT connections fail keeps being unready until one opens again
(a worker that has not tried yet counts its start as the last success).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.snapshot import WorkerSnapshot

UNSETTLED = frozenset({"catching_up", "revoking", "assigned"})
"""Partition states of an assignment that is not settled yet."""


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str


def stt_reachable(snapshot: WorkerSnapshot, now: float, window_s: float, started: float) -> bool:
    failure, ok = snapshot.stt_last_failure, snapshot.stt_last_ok
    if failure is None or (ok is not None and ok >= failure):
        return True
    return now - max(ok or 0.0, started) <= window_s


def readiness(snapshot: WorkerSnapshot, *, now: float, stt_window_s: float, started: float) -> Verdict:
    """Whether the worker should receive work (``now`` and ``started`` in wall time)."""
    if not snapshot.running:
        return Verdict(False, "not running")
    if not snapshot.joined:
        return Verdict(False, "not joined to the consumer group (no assignment yet, or a rebalance is under way)")
    unsettled = [f"{p.partition}:{p.state}" for p in snapshot.partitions if p.state in UNSETTLED]
    if unsettled:
        return Verdict(False, "assignment not settled: " + ", ".join(unsettled))
    if not snapshot.broker_reachable:
        return Verdict(False, "Kafka broker unreachable")
    if not stt_reachable(snapshot, now, stt_window_s, started):
        return Verdict(False, f"STT unreachable for more than {stt_window_s:g} s")
    return Verdict(True, "ready")
