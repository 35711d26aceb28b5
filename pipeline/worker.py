"""The worker: consumes `stt.audio`, runs one paced STT socket per session, publishes turns and finals.

Wiring only; the decisions live in the pure modules. Per record: parse (:mod:`pipeline.records`) →
route to its :class:`~pipeline.session.Session` (opened by its first audio chunk, or resumed from its
checkpoint) → the session's :class:`~pipeline.runner.SessionRunner` paces it out. Bad records go to
the dead-letter topic.

Delivery (see README "Delivery guarantees"). Each assigned input partition has a transactional
producer (:mod:`pipeline.kafka.transactions`). Every ``commit_interval_ms`` one transaction per
partition carries the records its sessions produced since the last one, their checkpoints
(`stt.sessions`) and the partition's watermark as the group's committed offset. The watermark
(:class:`~pipeline.offsets.PartitionWatermark`) is the lowest resume offset of the partition's open
sessions. On assignment the partition's checkpoints are read back: input of finished sessions and
input below an open session's resume offset are skipped, and numbering continues where it stopped.
On revocation and on SIGTERM, in-flight drains get a grace period, then a last transaction commits
everything and the sockets of the revoked partitions close.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from pipeline import metrics
from pipeline.config import WorkerConfig
from pipeline.contract import Checkpoint
from pipeline.kafka.checkpoints import load_checkpoints
from pipeline.kafka.topics import ensure_topics
from pipeline.kafka.transactions import Extra, Fenced, PartitionTransactions
from pipeline.offsets import PartitionWatermark
from pipeline.records import AudioFormat, InputMessage, Rejected, dead_letter, parse
from pipeline.runner import SessionRunner
from pipeline.session import Resume, Session, SessionConfig, Taken
from pipeline.stt.client import open_socket

log = logging.getLogger("pipeline.worker")
COMPLETED_MEMORY = 100_000
# Fetches wait at most FETCH_MAX_WAIT_MS for data, so a healthy partition gets a response about that
# often even when idle. No response for FETCH_SILENCE_MS (less than any sensible silence budget) means
# Kafka is unreachable: a quiet partition is then not a quiet speaker, and no silence may be filled.
FETCH_MAX_WAIT_MS = 100
FETCH_SILENCE_MS = 250


def wall_ms() -> int:
    return int(time.time() * 1000)


def _same(a: Checkpoint | None, b: Checkpoint | None) -> bool:
    if a is None or b is None:
        return a is b
    return dataclasses.replace(a, at=0) == dataclasses.replace(b, at=0)


@dataclass
class _Open:
    session: Session
    partition: int
    runner: SessionRunner
    opened_at: float
    last_input_at: float
    task: asyncio.Task[None] | None = None
    last_seq: int = -1


@dataclass
class _Partition:
    """Everything the worker keeps for one assigned input partition."""

    tp: TopicPartition
    watermark: PartitionWatermark
    txn: PartitionTransactions
    checkpoints: dict[str, Checkpoint]  # latest known state of every recorded session
    committed: dict[str, Checkpoint]  # what stt.sessions holds, as of our last commit
    dormant: dict[str, float] = field(default_factory=dict)  # open checkpoints not yet resumed: since
    lagging: bool = False
    paused: bool = False
    blocked: bool = False  # waiting for a free session slot
    frozen: bool = False  # revoked, committed, waiting to learn whether it comes back: no commits
    catch_up_to: int | None = None  # kept across a rebalance: records below this were handled already
    kept_at_ms: float = 0.0

    @property
    def live(self) -> bool:
        return not (self.lagging or self.paused or self.blocked)


@dataclass
class WorkerStats:
    records: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    gaps: int = 0
    replay_skipped: int = 0
    sessions_opened: int = 0
    sessions_resumed: int = 0
    reconnects: int = 0
    transactions: int = 0
    transaction_failures: int = 0
    pauses: int = 0
    sessions_ended: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.session_config = SessionConfig(
            frame_ms=config.frame_ms,
            max_lead_ms=config.max_lead_ms,
            silence_budget_ms=config.silence_budget_ms,
            drain_deadline_s=config.drain_deadline_s,
            replay_margin_ms=config.replay_margin_ms,
            max_reconnects=config.max_reconnects,
        )
        self.stats = WorkerStats()
        self._open: dict[str, _Open] = {}
        self._completed: OrderedDict[str, int] = OrderedDict()
        self._parts: dict[int, _Partition] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._topics = {"turns": config.turns_topic, "transcripts": config.transcripts_topic}
        self._revoked: set[int] = set()

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        config = self.config
        await ensure_topics(config)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=config.bootstrap_servers,
            group_id=config.group_id,
            group_instance_id=config.group_instance_id or None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            session_timeout_ms=config.session_timeout_ms,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            heartbeat_interval_ms=max(500, config.session_timeout_ms // 5),
            rebalance_timeout_ms=int((config.revoke_grace_s + 30) * 1000),
            max_poll_interval_ms=300_000,
        )
        self._consumer = consumer
        consumer.subscribe([config.audio_topic], listener=_Listener(self))
        await consumer.start()
        log.info("worker started: %s", config)
        committer = asyncio.create_task(self._commit_loop(stop), name="committer")
        try:
            while not stop.is_set():
                if committer.done():
                    committer.result()  # surfaces an unexpected failure of the commit loop
                batch = await consumer.getmany(timeout_ms=100, max_records=500)
                for tp, records in batch.items():
                    part = self._parts.get(tp.partition)
                    if part is None:
                        # fetched before our assignment callback finished (or after revocation): not ours
                        # to handle yet; read it again once the partition is set up
                        if tp in consumer.assignment():
                            consumer.seek(tp, records[0].offset)
                        continue
                    for record in records:
                        if record.offset < part.watermark.position:
                            # handled already: the fetcher re-reads from the committed offset after a
                            # rebalance that kept this partition; not live until it is back
                            part.catch_up_to = part.watermark.position
                            continue
                        part.catch_up_to = None
                        if not self._handle(part, record):
                            break
                await self._caught_up(consumer)
                self._update_flow()
        finally:
            stop.set()  # the commit loop finishes its current transaction and returns; never cancel it
            with contextlib.suppress(Exception):
                await committer
            started = time.monotonic()
            await self._hand_off(list(self._parts))
            log.info("handed off in %.2f s", time.monotonic() - started)
            await consumer.stop()
            log.info("worker stopped: %s", self.stats.as_dict())

    # -- input -----------------------------------------------------------------------------------

    def _handle(self, part: _Partition, record: ConsumerRecord[bytes, bytes]) -> bool:
        """Route one record; False if the partition had to stop at it (no free session slot)."""
        session_id: str | None = None
        try:
            message = parse(record.key, record.headers, record.value)
            session_id = message.session_id
            current = self._open.get(session_id)
            if current is None:
                current = self._open_for(part, message, record.offset)
                if current is None:
                    if part.blocked:
                        return False
                    self._consumed(part, record.offset)
                    return True
            if current.session.accept(message, time.monotonic(), record.offset):
                current.last_seq = max(current.last_seq, message.seq)
                current.last_input_at = time.monotonic()
                current.runner.notify()
            else:
                self.stats.duplicates += 1
        except Rejected as rejected:
            self._dead_letter(part, record, rejected, session_id)
        self._consumed(part, record.offset)
        return True

    def _consumed(self, part: _Partition, offset: int) -> None:
        self.stats.records += 1
        metrics.RECORDS.inc()
        part.watermark.consumed(offset)

    def _open_for(self, part: _Partition, message: InputMessage, offset: int) -> _Open | None:
        """The session a record opens or resumes, or None if the record is skipped (or blocked)."""
        session_id = message.session_id
        checkpoint = part.checkpoints.get(session_id)
        if checkpoint is not None and checkpoint.status != "open":
            if checkpoint.close_offset is not None and offset <= checkpoint.close_offset:
                self.stats.replay_skipped += 1  # input of a session that already ended
                return None
            if message.seq < checkpoint.next_input_seq:
                self.stats.duplicates += 1
                return None
            raise Rejected("after_end", f"session {session_id!r} already ended ({checkpoint.status})")
        if checkpoint is not None:
            if offset < checkpoint.resume_offset:
                self.stats.replay_skipped += 1  # transcribed before a restart
                return None
            if not self._slot_free(part, offset):
                return None
            part.dormant.pop(session_id, None)
            self.stats.sessions_resumed += 1
            resume = Resume.from_checkpoint(checkpoint)
            return self._start_session(session_id, checkpoint.format, part, offset, resume)
        if session_id in self._completed:
            if message.seq <= self._completed[session_id]:
                self.stats.duplicates += 1
                return None
            raise Rejected("after_end", f"session {session_id!r} already ended")
        if message.type != "audio" or message.format is None:
            raise Rejected("no_session", f"a `{message.type}` record for a session that sent no audio")
        if not self._slot_free(part, offset):
            return None
        return self._start_session(session_id, message.format, part, offset, None)

    def _slot_free(self, part: _Partition, offset: int) -> bool:
        if len(self._open) < self.config.max_sessions:
            return True
        assert self._consumer is not None
        self._consumer.seek(part.tp, offset)  # read this record again once a session slot frees up
        self._consumer.pause(part.tp)
        part.blocked = True
        return False

    def _dead_letter(
        self, part: _Partition, record: ConsumerRecord[bytes, bytes], rejected: Rejected, session_id: str | None
    ) -> None:
        if session_id is None and record.key:
            with contextlib.suppress(UnicodeDecodeError):
                session_id = record.key.decode("utf-8")
        self.stats.dead_letters += 1
        metrics.DEAD_LETTERS.labels(rejected.reason).inc()
        log.warning("dead letter p%d@%d %s: %s", part.tp.partition, record.offset, rejected.reason, rejected.detail)
        letter = dead_letter(
            rejected,
            session_id=session_id,
            topic=part.tp.topic,
            partition=part.tp.partition,
            offset=record.offset,
            timestamp=record.timestamp,
            headers=record.headers,
            value=record.value,
            at=wall_ms(),
        )
        part.txn.add([(self.config.dead_letter_topic, session_id, letter)])  # atomic with the offset

    # -- sessions --------------------------------------------------------------------------------

    def _start_session(
        self, session_id: str, fmt: AudioFormat, part: _Partition, offset: int, resume: Resume | None
    ) -> _Open:
        config = self.config
        session = Session(
            session_id, fmt, first_offset=offset, config=self.session_config, wall_ms=wall_ms, resume=resume
        )
        holder: list[_Open] = []
        runner = SessionRunner(
            session,
            connect=lambda: open_socket(config.stt_base_url, fmt, config.api_key, config.stt_version),
            emit=lambda taken: self._emit(holder[0], taken),
            input_live=lambda: self._live(part),
        )
        now = time.monotonic()
        current = _Open(session, part.tp.partition, runner, now, now)
        holder.append(current)
        self._open[session_id] = current
        part.watermark.hold(session_id, session.resume_offset)
        self.stats.sessions_opened += 1
        metrics.OPEN_SESSIONS.inc()
        self._emit(current, session.take())
        current.task = asyncio.create_task(self._run_session(current), name=f"session:{session_id}")
        return current

    def _emit(self, current: _Open, taken: Taken) -> None:
        part = self._parts.get(current.partition)
        outputs = taken.outputs
        if part is None or not outputs:
            return
        acks = part.txn.add([(self._topics[o.topic], o.key, o.record.to_dict()) for o in outputs])
        emitted = time.monotonic()
        session = current.session
        final = session.ended

        def observe(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and done.exception() is None:
                now = time.monotonic()
                metrics.EVENT_TO_ACK_S.observe(now - emitted)
                if final and session.close_sent_at is not None:
                    metrics.CLOSE_TO_FINAL_S.observe(now - session.close_sent_at)

        acks.done.add_done_callback(observe)

    async def _run_session(self, current: _Open) -> None:
        session = current.session
        try:
            await current.runner.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session %s crashed; it stays held and is replayed after a restart", session.session_id)
            return
        self._session_ended(current)

    def _session_ended(self, current: _Open) -> None:
        session = current.session
        status = session.status or "failed"
        part = self._parts.get(current.partition)
        if part is not None:
            taken = session.take()
            self._emit(current, taken)
            part.checkpoints[session.session_id] = taken.checkpoint
            part.watermark.release(session.session_id)
        self._open.pop(session.session_id, None)
        self._completed[session.session_id] = current.last_seq
        while len(self._completed) > COMPLETED_MEMORY:
            self._completed.popitem(last=False)
        metrics.SESSIONS_ENDED.labels(status).inc()
        metrics.OPEN_SESSIONS.dec()
        metrics.AUDIO_SENT_S.inc(session.audio_ms / 1000)
        metrics.SILENCE_SENT_S.inc(session.pacer.silence_ms_sent / 1000)
        self.stats.sessions_ended[status] = self.stats.sessions_ended.get(status, 0) + 1
        self.stats.duplicates += session.duplicates
        self.stats.gaps += session.gaps
        self.stats.reconnects += session.reconnects
        log.info(
            "session %s ended %s: audio to %.1f s (%.1f s silence fill), %d reconnects, %s/%d Hz/%s",
            session.session_id,
            status,
            session.audio_ms / 1000,
            session.pacer.silence_ms_sent / 1000,
            session.reconnects,
            session.format.encoding,
            session.format.sample_rate,
            session.format.endpoint,
        )

    async def _cancel(self, sessions: list[_Open]) -> None:
        tasks = [o.task for o in sessions if o.task is not None and not o.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _guards(self, now: float) -> None:
        """End sessions whose producer went silent or that ran too long: they would pin the watermark."""
        config = self.config
        for current in list(self._open.values()):
            session = current.session
            if session.ended or session.phase != "streaming":
                continue
            if now - current.last_input_at > config.session_idle_timeout_s:
                session.truncate("idle_timeout", f"no input for {config.session_idle_timeout_s:g} s (lost `end`?)")
            elif now - current.opened_at > config.session_max_s:
                session.truncate("max_duration", f"session exceeded {config.session_max_s:g} s")
            else:
                continue
            current.runner.notify()
        for part in self._parts.values():
            for session_id, since in list(part.dormant.items()):
                if now - since <= config.session_idle_timeout_s or session_id in self._open:
                    continue
                del part.dormant[session_id]
                checkpoint = part.checkpoints[session_id]
                session = Session(
                    session_id,
                    checkpoint.format,
                    first_offset=checkpoint.resume_offset,
                    config=self.session_config,
                    wall_ms=wall_ms,
                    resume=Resume.from_checkpoint(checkpoint),
                )
                session.truncate("idle_timeout", "no input after a restart (lost `end`?)")
                taken = session.take()
                part.txn.add([(self._topics[o.topic], o.key, o.record.to_dict()) for o in taken.outputs])
                part.checkpoints[session_id] = taken.checkpoint
                part.watermark.release(session_id)

    # -- transactions, flow, rebalancing ---------------------------------------------------------

    def _build(self, part: _Partition) -> tuple[int, Extra]:
        """The partition's next commit, computed synchronously: offset and changed checkpoints."""
        topic = self.config.sessions_topic
        for session_id, current in self._open.items():
            if current.partition == part.tp.partition:
                part.watermark.hold(session_id, current.session.resume_offset)
                taken = current.session.take()  # the outputs the checkpoint counts go into this transaction
                self._emit(current, taken)
                part.checkpoints[session_id] = taken.checkpoint
        offset = part.watermark.committable()
        extra: Extra = []
        for session_id, checkpoint in list(part.checkpoints.items()):
            committed = part.committed.get(session_id)
            passed = checkpoint.close_offset is not None and checkpoint.close_offset < offset
            if checkpoint.status != "open" and _same(committed, checkpoint) and passed:
                extra.append((topic, session_id, None))  # the watermark passed it: forget the session
            elif not _same(committed, checkpoint):
                extra.append((topic, session_id, checkpoint.to_dict()))
        return offset, extra

    async def _commit(self, part: _Partition) -> bool:
        try:
            done = await part.txn.commit(lambda: self._build(part))
        except Fenced:
            log.error("partition %d was fenced by another worker; dropping it", part.tp.partition)
            await self._drop(part.tp.partition)
            return False
        if done is None:
            self.stats.transaction_failures += 1
            return False
        self.stats.transactions = sum(p.txn.transactions for p in self._parts.values())
        for _, session_id, checkpoint in done:
            if checkpoint is None:
                part.committed.pop(session_id, None)
                part.checkpoints.pop(session_id, None)
            else:
                part.committed[session_id] = Checkpoint.from_json(checkpoint)
        return True

    async def _commit_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.commit_interval_ms / 1000.0)
            if stop.is_set():
                return
            self._guards(time.monotonic())
            for part in list(self._parts.values()):
                if not part.frozen:
                    await self._commit(part)

    async def commit(self) -> None:
        """Commit every partition now (tests and shutdown)."""
        for part in list(self._parts.values()):
            if not part.frozen:
                await self._commit(part)

    async def _caught_up(self, consumer: AIOKafkaConsumer) -> None:
        """A kept partition whose producer went quiet: caught up once a fetch answered after the
        rebalance (the position is only trustworthy then: aiokafka resets it to the committed
        offset after the assignment callback) and the position is back where the worker was."""
        for part in list(self._parts.values()):
            target = part.catch_up_to
            if target is None or part.tp not in consumer.assignment():
                continue
            polled = consumer.last_poll_timestamp(part.tp)
            if polled is not None and polled > part.kept_at_ms and await consumer.position(part.tp) >= target:
                part.catch_up_to = None

    def _live(self, part: _Partition) -> bool:
        """Whether a quiet partition means a quiet speaker (so the pacer may fill silence)."""
        if not part.live or part.frozen or part.catch_up_to is not None or self._consumer is None:
            return False
        polled = self._consumer.last_poll_timestamp(part.tp)  # None: no fetch answered since assignment
        return polled is not None and time.time() * 1000 - polled <= FETCH_SILENCE_MS

    def _update_flow(self) -> None:
        """Pause partitions whose sessions buffer too much audio; resume them when it drains."""
        consumer = self._consumer
        assert consumer is not None
        queued: dict[int, int] = {}
        for current in self._open.values():
            queued[current.partition] = queued.get(current.partition, 0) + current.session.pacer.queued_bytes
        for partition, part in self._parts.items():
            if part.frozen:
                continue
            highwater = consumer.highwater(part.tp)
            part.lagging = highwater is not None and highwater - part.watermark.position > self.config.lag_threshold
            buffered = queued.get(partition, 0)
            if not part.paused and buffered > self.config.pause_high_bytes:
                consumer.pause(part.tp)
                part.paused = True
                self.stats.pauses += 1
                log.info("paused p%d: %d bytes buffered", partition, buffered)
            elif part.paused and buffered < self.config.pause_low_bytes:
                part.paused = False
                if not part.blocked:
                    consumer.resume(part.tp)
                log.info("resumed p%d: %d bytes buffered", partition, buffered)
            if part.blocked and len(self._open) < self.config.max_sessions:
                part.blocked = False
                if not part.paused:
                    consumer.resume(part.tp)

    async def on_assigned(self, partitions: set[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        config = self.config
        assigned = {tp.partition for tp in partitions}
        kept, lost = self._revoked & assigned, self._revoked - assigned
        self._revoked = set()
        for partition in sorted(lost):  # committed at revocation; the new owner resumes from there
            await self._drop(partition)
        for partition in sorted(kept):  # sessions and sockets carry on where they were
            part = self._parts[partition]
            part.frozen = False
            # The fetcher may already be re-reading from the committed offset: those records were
            # handled before the rebalance, so they are skipped, and the partition is not live
            # (no silence fill) until the consumer is back where the worker was.
            part.catch_up_to = part.watermark.position
            part.kept_at_ms = time.time() * 1000
        if kept or lost:
            log.info("rebalanced: kept %s with their sessions, gave up %s", sorted(kept), sorted(lost))
        new = sorted(p for p in assigned if p not in self._parts)
        txns = {}
        for partition in new:  # fence the previous owners first: their open transactions end now
            tp = TopicPartition(config.audio_topic, partition)
            txns[partition] = PartitionTransactions(config.bootstrap_servers, config.group_id, tp)
            await txns[partition].start()
        loaded = await load_checkpoints(config.bootstrap_servers, config.sessions_topic, new)
        now = time.monotonic()
        for partition in new:
            tp = TopicPartition(config.audio_topic, partition)
            position = await consumer.position(tp)
            checkpoints = loaded[partition]
            part = _Partition(tp, PartitionWatermark(position), txns[partition], checkpoints, dict(checkpoints))
            part.txn.committed_offset = position
            for session_id, checkpoint in part.checkpoints.items():
                if checkpoint.status == "open":
                    part.watermark.hold(session_id, checkpoint.resume_offset)
                    part.dormant[session_id] = now
            self._parts[partition] = part
        log.info("assigned %s (%d checkpoints)", new, sum(len(loaded[p]) for p in new))

    async def on_revoked(self, partitions: set[TopicPartition]) -> None:
        """Eager rebalancing revokes every partition, also those that will come back. So: pause, give
        drains their grace, commit, and *keep* the sessions and sockets; the assignment that follows
        says which partitions stay (they carry on) and which go (their sessions close, uncommitted
        work is redone by the new owner, whose fencing stops any late commit of ours)."""
        revoked = sorted(tp.partition for tp in partitions if tp.partition in self._parts)
        if not revoked:
            return
        parts = [self._parts[p] for p in revoked]
        await self._settle(parts)
        for part in parts:
            part.frozen = True
        self._revoked = set(revoked)

    async def _settle(self, parts: list[_Partition], *, close: bool = False) -> None:
        """Pause, give sessions that are draining the grace period to finish, optionally close the
        sockets, then commit each partition (a frozen one was committed already)."""
        consumer = self._consumer
        if consumer is not None:
            with contextlib.suppress(Exception):
                consumer.pause(*(part.tp for part in parts if part.tp in consumer.assignment()))
        owned = {part.tp.partition for part in parts}
        deadline = time.monotonic() + self.config.revoke_grace_s
        while time.monotonic() < deadline:
            draining = [o for o in self._open.values() if o.partition in owned and o.session.phase != "streaming"]
            if not draining:
                break
            await asyncio.sleep(0.05)
        if close:
            await self._cancel([o for o in self._open.values() if o.partition in owned])
        for part in parts:
            if part.frozen:
                continue
            with contextlib.suppress(Exception):
                for _ in range(3):
                    if await self._commit(part):
                        break

    async def _hand_off(self, partitions: list[int]) -> None:
        """Shutdown: pause, let in-flight drains finish within the grace period, close sockets, commit."""
        parts = [self._parts[p] for p in partitions if p in self._parts]
        if not parts:
            return
        owned = {part.tp.partition for part in parts}
        await self._settle(parts, close=True)
        leaving = [o for o in self._open.values() if o.partition in owned]
        for current in leaving:
            self._open.pop(current.session.session_id, None)
            metrics.OPEN_SESSIONS.dec()
        for part in parts:
            await part.txn.stop()
            self._parts.pop(part.tp.partition, None)
        log.info("handed off partitions %s (%d open sessions checkpointed)", sorted(owned), len(leaving))

    async def _drop(self, partition: int) -> None:
        """The partition is lost (fenced): stop its sessions without committing anything."""
        part = self._parts.pop(partition, None)
        leaving = [o for o in self._open.values() if o.partition == partition]
        await self._cancel(leaving)
        for current in leaving:
            self._open.pop(current.session.session_id, None)
            metrics.OPEN_SESSIONS.dec()
        if part is not None:
            await part.txn.stop()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.worker.on_assigned(assigned)
