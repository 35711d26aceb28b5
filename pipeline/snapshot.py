"""A read-only picture of a running worker: what :meth:`Worker.snapshot` returns.

Tests, the benchmark and the HTTP status endpoint read the worker through this, never through its
private attributes. Everything is a frozen value; ``to_dict()`` gives JSON-ready data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Counters:
    """Monotonic counts since the worker started."""

    records: int = 0
    dead_letters: int = 0
    letters_replayed: int = 0  # records re-read after a crash whose dead letters a previous owner committed
    corrupt_records: int = 0
    duplicates: int = 0
    gaps: int = 0
    replay_skipped: int = 0
    deferred: int = 0
    sessions_opened: int = 0
    sessions_resumed: int = 0
    reconnects: int = 0
    transactions: int = 0
    transaction_failures: int = 0
    fenced: int = 0
    quarantined: int = 0
    pauses: int = 0
    resumes: int = 0
    partitions_kept: int = 0  # kept with their sessions across a rebalance
    session_crashes: int = 0
    sessions_ended: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    session_id: str
    partition: int
    phase: str
    status: str | None
    first_offset: int
    resume_offset: int
    queued_bytes: int
    held_bytes: int
    audio_ms: float
    silence_ms: float
    reconnects: int


@dataclass(frozen=True, slots=True)
class PartitionSnapshot:
    partition: int
    state: str
    live: bool
    position: int  # every record below this was read
    watermark: int  # what the next commit would commit
    committed: int | None  # the last committed offset
    behind: int | None  # records between the position and the high watermark
    open_sessions: int
    dormant_sessions: int
    deferred_records: int
    queued_bytes: int
    pending_records: int
    last_record_ms: int | None = None  # timestamp of the newest record read (ms since the epoch)


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    running: bool
    joined: bool  # the consumer has an assignment (possibly empty) from the group
    partitions: tuple[PartitionSnapshot, ...]
    sessions: tuple[SessionSnapshot, ...]
    counters: Counters
    broker_reachable: bool = True  # the consumer knows its group coordinator and no partition is disconnected
    stt_last_ok: float | None = None  # wall time of the last STT connection that opened
    stt_last_failure: float | None = None  # wall time of the last STT connection that could not open

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def session(self, session_id: str) -> SessionSnapshot | None:
        return next((s for s in self.sessions if s.session_id == session_id), None)

    def partition(self, number: int) -> PartitionSnapshot | None:
        return next((p for p in self.partitions if p.partition == number), None)
