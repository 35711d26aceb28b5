"""The worker's open sessions: each one's :class:`~pipeline.session.Session`, its runner task, its guards.

:class:`SessionTable` starts a session's :class:`~pipeline.runner.SessionRunner` as an asyncio task,
turns what the session hands over (:meth:`Session.take`: its records and its checkpoint as of the same
instant) into :class:`~pipeline.commit.OutRecord` values for the partition's
:class:`~pipeline.commit.CommitBook`, and ends sessions: normally, by a guard (no input for
``session_idle_timeout_s``, older than ``session_max_s``), or when the runner task crashed (the
session is then published as ``failed`` and its slot freed). Outputs always go to the book with the
checkpoint that counts them, so the commit path never sees one without the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection

from pipeline import metrics
from pipeline.commit import CommitBook, OutRecord
from pipeline.contract import Checkpoint, TranscriptRecord
from pipeline.logs import set_context
from pipeline.records import AudioFormat, InputMessage
from pipeline.runner import SessionRunner
from pipeline.session import Resume, Session, SessionConfig, Taken
from pipeline.snapshot import Counters, SessionSnapshot

log = logging.getLogger("pipeline.sessions")

Connect = Callable[[AudioFormat], Awaitable[ClientConnection]]


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class OpenSession:
    session: Session
    partition: int
    runner: SessionRunner
    opened_at: float
    last_input_at: float
    task: asyncio.Task[None] | None = None
    last_seq: int = -1


class SessionTable:
    """Open sessions of one worker, keyed by session id."""

    def __init__(
        self,
        *,
        topics: dict[str, str],
        session_config: SessionConfig,
        connect: Connect,
        book_of: Callable[[int], CommitBook | None],
        live: Callable[[int], bool],
        ended: Callable[[OpenSession], None],
        counters: Counters,
        scrub: Callable[[str], str],
        added: Callable[[int], None] = lambda partition: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._topics = topics
        self.session_config = session_config
        self._connect = connect
        self._book_of = book_of
        self._live = live
        self._ended = ended
        self._counters = counters
        self._scrub = scrub
        self._added = added
        self._clock = clock
        self.open: dict[str, OpenSession] = {}

    def __len__(self) -> int:
        return len(self.open)

    def get(self, session_id: str) -> OpenSession | None:
        return self.open.get(session_id)

    def in_partition(self, partition: int) -> list[OpenSession]:
        return [o for o in self.open.values() if o.partition == partition]

    # -- lifecycle -------------------------------------------------------------------------------

    def start(
        self, session_id: str, fmt: AudioFormat, partition: int, offset: int, resume: Resume | None
    ) -> OpenSession:
        session = Session(
            session_id,
            fmt,
            first_offset=offset,
            config=self.session_config,
            wall_ms=wall_ms,
            resume=resume,
            scrub=self._scrub,
        )
        holder: list[OpenSession] = []
        runner = SessionRunner(
            session,
            connect=lambda: self._connect(fmt),
            emit=lambda taken: self.hand_over(holder[0], taken),
            input_live=lambda: self._live(partition),
        )
        now = self._clock()
        current = OpenSession(session, partition, runner, now, now)
        holder.append(current)
        self.open[session_id] = current
        self._counters.sessions_opened += 1
        metrics.OPEN_SESSIONS.inc()
        self.hand_over(current, session.take())
        current.task = asyncio.create_task(self._run(current), name=f"session:{session_id}")
        return current

    def deliver(self, current: OpenSession, message: InputMessage, offset: int) -> bool:
        """Give the session one input record; False for a duplicate (raises ``Rejected`` for bad input)."""
        now = self._clock()
        if not current.session.accept(message, now, offset):
            return False
        current.last_seq = max(current.last_seq, message.seq)
        current.last_input_at = now
        current.runner.notify()
        return True

    def hand_over(self, current: OpenSession, taken: Taken) -> None:
        """The session's records and checkpoint, together, into its partition's commit book."""
        self.add_taken(current.partition, current.session, taken)

    def add_taken(self, partition: int, session: Session, taken: Taken) -> None:
        """Records and checkpoint of any session of ``partition`` (also one that is not open, e.g. a
        dormant checkpoint the guard truncated), together, into the partition's commit book."""
        book = self._book_of(partition)
        if book is None:
            return
        now = self._clock()
        close_at = session.close_sent_at

        def final(record: object) -> bool:
            return isinstance(record, TranscriptRecord) and record.kind == "session"

        records = [
            OutRecord(
                self._topics[o.topic],
                o.key,
                o.record.to_json(),
                created_at=now,
                close_sent_at=close_at if final(o.record) else None,
            )
            for o in taken.outputs
        ]
        book.add(records, taken.checkpoint)
        if records:
            self._added(partition)  # the eager send trigger

    async def _run(self, current: OpenSession) -> None:
        session = current.session
        set_context(session_id=session.session_id, partition=current.partition)
        try:
            await current.runner.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("session %s: its task crashed; publishing it as failed", session.session_id)
            self._counters.session_crashes += 1
            session.fail("worker_error", f"the worker's task for this session crashed: {type(exc).__name__}")
            self.hand_over(current, session.take())
        self.finish(current)

    def finish(self, current: OpenSession) -> None:
        session = current.session
        self.hand_over(current, session.take())
        if self.open.pop(session.session_id, None) is None:
            return
        status = session.status or "failed"
        counters = self._counters
        counters.sessions_ended[status] = counters.sessions_ended.get(status, 0) + 1
        counters.duplicates += session.duplicates
        counters.gaps += session.gaps
        counters.reconnects += session.reconnects
        metrics.SESSIONS_ENDED.labels(status).inc()
        metrics.OPEN_SESSIONS.dec()
        metrics.AUDIO_SENT_S.inc(session.audio_ms / 1000)
        metrics.SILENCE_SENT_S.inc(session.pacer.silence_ms_sent / 1000)
        log.info(
            "session %s ended %s: audio to %.1f s (%.1f s silence fill), %d reconnects",
            session.session_id,
            status,
            session.audio_ms / 1000,
            session.pacer.silence_ms_sent / 1000,
            session.reconnects,
        )
        self._ended(current)

    async def close(self, sessions: list[OpenSession]) -> None:
        """Cancel the sessions' tasks (their sockets close) and forget them, without ending them:
        their partition is handed off or lost, and the next owner resumes them from checkpoints."""
        tasks = [o.task for o in sessions if o.task is not None and not o.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for current in sessions:
            if self.open.pop(current.session.session_id, None) is not None:
                metrics.OPEN_SESSIONS.dec()

    # -- guards ----------------------------------------------------------------------------------

    def guard(self, idle_timeout_s: float, max_s: float) -> None:
        """Truncate sessions without input for too long or running too long; they would pin the watermark.
        The truncation's records and finished checkpoint go to the book together, at once."""
        now = self._clock()
        for current in list(self.open.values()):
            session = current.session
            if session.ended or session.phase != "streaming":
                continue
            if now - current.last_input_at > idle_timeout_s:
                session.truncate("idle_timeout", f"no input for {idle_timeout_s:g} s (lost `end`?)")
            elif now - current.opened_at > max_s:
                session.truncate("max_duration", f"session exceeded {max_s:g} s")
            else:
                continue
            self.hand_over(current, session.take())
            current.runner.notify()

    def truncate_dormant(self, partition: int, checkpoint: Checkpoint | None) -> None:
        """A session checkpointed open that got no input since a restart: end it ``truncated`` from its
        checkpoint (its `end` was probably lost), publishing its records and finished checkpoint."""
        if checkpoint is None or checkpoint.status != "open":
            return
        session = Session(
            checkpoint.session_id,
            checkpoint.format,
            first_offset=checkpoint.resume_offset,
            config=self.session_config,
            wall_ms=wall_ms,
            resume=Resume.from_checkpoint(checkpoint),
        )
        session.truncate("idle_timeout", "no input after a restart (lost `end`?)")
        self.add_taken(partition, session, session.take())

    # -- reading ---------------------------------------------------------------------------------

    def snapshot(self) -> tuple[SessionSnapshot, ...]:
        return tuple(
            SessionSnapshot(
                session_id=o.session.session_id,
                partition=o.partition,
                phase=o.session.phase,
                status=o.session.status,
                first_offset=o.session.first_offset,
                resume_offset=o.session.resume_offset,
                queued_bytes=o.session.pacer.queued_bytes,
                held_bytes=o.session.held_bytes,
                audio_ms=o.session.audio_ms,
                silence_ms=o.session.pacer.silence_ms_sent,
                reconnects=o.session.reconnects,
            )
            for o in self.open.values()
        )

    def queued_bytes(self) -> dict[int, int]:
        queued: dict[int, int] = {}
        for o in self.open.values():
            queued[o.partition] = queued.get(o.partition, 0) + o.session.pacer.queued_bytes
        return queued
