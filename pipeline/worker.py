"""The worker: consumes `stt.audio`, runs one paced STT socket per session, publishes turns and finals.

Wiring only; the decisions live in the pure modules. Per record: parse (:mod:`pipeline.records`) →
route to its :class:`~pipeline.session.Session` (opened by its first audio chunk) → the session's
:class:`~pipeline.runner.SessionRunner` paces it out. Bad records go to the dead-letter topic.

Offsets are committed manually, per partition, at the :class:`~pipeline.offsets.PartitionWatermark`:
an open session holds its first offset until every record it produced is acknowledged; a dead-lettered
record holds its own offset until the dead letter is acknowledged. So nothing is committed before
what it produced is published, and a crashed worker's sessions are replayed from their start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.structs import OffsetAndMetadata

from pipeline import metrics
from pipeline.config import WorkerConfig
from pipeline.kafka.publisher import Acks, Publisher
from pipeline.kafka.topics import ensure_topics
from pipeline.offsets import PartitionWatermark
from pipeline.records import Rejected, dead_letter, parse
from pipeline.runner import SessionRunner
from pipeline.session import Output, Session, SessionConfig
from pipeline.stt.client import open_socket

log = logging.getLogger("pipeline.worker")
COMPLETED_MEMORY = 100_000


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Open:
    session: Session
    partition: int
    runner: SessionRunner
    task: asyncio.Task[None] | None = None
    acks: list[Acks] = field(default_factory=list)
    last_seq: int = -1


@dataclass
class WorkerStats:
    records: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    gaps: int = 0
    sessions_opened: int = 0
    sessions_ended: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "dead_letters": self.dead_letters,
            "duplicates": self.duplicates,
            "gaps": self.gaps,
            "sessions_opened": self.sessions_opened,
            "sessions_ended": dict(self.sessions_ended),
        }


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.session_config = SessionConfig(
            frame_ms=config.frame_ms,
            max_lead_ms=config.max_lead_ms,
            silence_budget_ms=config.silence_budget_ms,
            drain_deadline_s=config.drain_deadline_s,
        )
        self.stats = WorkerStats()
        self._open: dict[str, _Open] = {}
        self._completed: OrderedDict[str, int] = OrderedDict()
        self._watermarks: dict[int, PartitionWatermark] = {}
        self._committed: dict[int, int] = {}
        self._lagging: dict[int, bool] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._publisher: Publisher | None = None
        self._topics = {"turns": config.turns_topic, "transcripts": config.transcripts_topic}

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        config = self.config
        await ensure_topics(config)
        producer = AIOKafkaProducer(
            bootstrap_servers=config.bootstrap_servers, enable_idempotence=True, acks="all", linger_ms=5
        )
        await producer.start()
        self._publisher = Publisher(producer)
        self._publisher.start()
        consumer = AIOKafkaConsumer(
            config.audio_topic,
            bootstrap_servers=config.bootstrap_servers,
            group_id=config.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        self._consumer = consumer
        consumer.subscribe([config.audio_topic], listener=_Listener(self))
        await consumer.start()
        log.info("worker started: %s", config)
        committer = asyncio.create_task(self._commit_loop(stop), name="committer")
        try:
            while not stop.is_set():
                if self._publisher.failed is not None:
                    raise RuntimeError(f"publishing failed: {self._publisher.failed!r}")
                batch = await consumer.getmany(timeout_ms=100, max_records=500)
                for tp, records in batch.items():
                    for record in records:
                        self._handle(tp, record)
                self._update_lag()
        finally:
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            await self._abandon(list(self._open))
            await self._publisher.stop()
            with contextlib.suppress(Exception):
                await self.commit()
            await consumer.stop()
            await producer.stop()
            log.info("worker stopped: %s", self.stats.as_dict())

    # -- input -----------------------------------------------------------------------------------

    def _handle(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        self.stats.records += 1
        metrics.RECORDS.inc()
        watermark = self._watermarks.setdefault(tp.partition, PartitionWatermark(record.offset))
        watermark.consumed(record.offset)
        session_id: str | None = None
        try:
            message = parse(record.key, record.headers, record.value)
            session_id = message.session_id
            current = self._open.get(session_id)
            if current is None:
                if session_id in self._completed:
                    if message.seq <= self._completed[session_id]:
                        self.stats.duplicates += 1
                        return
                    raise Rejected("after_end", f"session {session_id!r} already ended")
                if message.type != "audio" or message.format is None:
                    raise Rejected("no_session", f"a `{message.type}` record for a session that sent no audio")
                current = self._open_session(session_id, message.format, tp.partition, record.offset)
            if current.session.accept(message, time.monotonic()):
                current.last_seq = max(current.last_seq, message.seq)
                current.runner.notify()
            else:
                self.stats.duplicates += 1
        except Rejected as rejected:
            self._dead_letter(tp, record, rejected, session_id)

    def _dead_letter(
        self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], rejected: Rejected, session_id: str | None
    ) -> None:
        assert self._publisher is not None
        if session_id is None and record.key:
            with contextlib.suppress(UnicodeDecodeError):
                session_id = record.key.decode("utf-8")
        self.stats.dead_letters += 1
        metrics.DEAD_LETTERS.labels(rejected.reason).inc()
        log.warning("dead letter p%d@%d %s: %s", tp.partition, record.offset, rejected.reason, rejected.detail)
        letter = dead_letter(
            rejected,
            session_id=session_id,
            topic=tp.topic,
            partition=tp.partition,
            offset=record.offset,
            timestamp=record.timestamp,
            headers=record.headers,
            value=record.value,
            at=wall_ms(),
        )
        watermark = self._watermarks[tp.partition]
        hold = ("dead-letter", record.offset)
        watermark.hold(hold, record.offset)
        acks = self._publisher.publish([(self.config.dead_letter_topic, session_id, letter)])
        acks.done.add_done_callback(lambda f: None if f.exception() else watermark.release(hold))

    # -- sessions --------------------------------------------------------------------------------

    def _open_session(self, session_id: str, fmt: Any, partition: int, offset: int) -> _Open:
        config = self.config
        session = Session(session_id, fmt, first_offset=offset, config=self.session_config, wall_ms=wall_ms)
        holder: list[_Open] = []
        runner = SessionRunner(
            session,
            connect=lambda: open_socket(config.stt_base_url, fmt, config.api_key, config.stt_version),
            emit=lambda outputs: self._emit(holder[0], outputs),
            input_live=lambda: not self._lagging.get(partition, False) and not self._paused(partition),
        )
        current = _Open(session, partition, runner)
        holder.append(current)
        self._open[session_id] = current
        self._watermarks[partition].hold(session_id, offset)
        self.stats.sessions_opened += 1
        metrics.OPEN_SESSIONS.inc()
        self._emit(current, session.take_outputs())
        current.task = asyncio.create_task(self._run_session(current), name=f"session:{session_id}")
        return current

    def _emit(self, current: _Open, outputs: list[Output]) -> None:
        assert self._publisher is not None
        acks = self._publisher.publish([(self._topics[o.topic], o.key, o.record) for o in outputs])
        emitted = time.monotonic()

        def observe(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and done.exception() is None:
                metrics.EVENT_TO_ACK_S.observe(time.monotonic() - emitted)

        acks.done.add_done_callback(observe)
        current.acks = [a for a in current.acks if not a.done.done()]
        current.acks.append(acks)

    async def _run_session(self, current: _Open) -> None:
        session = current.session
        try:
            await current.runner.run()
            await asyncio.gather(*(a.done for a in current.acks))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session %s crashed; it stays held and will be replayed", session.session_id)
            return
        status = session.status or "failed"
        if session.close_sent_at is not None:
            metrics.CLOSE_TO_FINAL_S.observe(time.monotonic() - session.close_sent_at)
        metrics.SESSIONS_ENDED.labels(status).inc()
        metrics.OPEN_SESSIONS.dec()
        metrics.AUDIO_SENT_S.inc(session.audio_ms / 1000)
        metrics.SILENCE_SENT_S.inc(session.pacer.silence_ms_sent / 1000)
        self.stats.sessions_ended[status] = self.stats.sessions_ended.get(status, 0) + 1
        self.stats.duplicates += session.duplicates
        self.stats.gaps += session.gaps
        self._open.pop(session.session_id, None)
        self._completed[session.session_id] = current.last_seq
        while len(self._completed) > COMPLETED_MEMORY:
            self._completed.popitem(last=False)
        watermark = self._watermarks.get(current.partition)
        if watermark is not None:
            watermark.release(session.session_id)
        log.info(
            "session %s ended %s: %.1f s sent (%.1f s silence fill), %s/%d Hz/%s",
            session.session_id,
            status,
            session.audio_ms / 1000,
            session.pacer.silence_ms_sent / 1000,
            session.format.encoding,
            session.format.sample_rate,
            session.format.endpoint,
        )

    async def _abandon(self, session_ids: list[str]) -> None:
        """Stop sessions without completing them: they stay held and are replayed by the next owner."""
        tasks = []
        for session_id in session_ids:
            current = self._open.pop(session_id, None)
            if current is not None and current.task is not None:
                current.task.cancel()
                tasks.append(current.task)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- offsets and flow ------------------------------------------------------------------------

    def _paused(self, partition: int) -> bool:
        consumer = self._consumer
        return consumer is not None and TopicPartition(self.config.audio_topic, partition) in consumer.paused()

    def _update_lag(self) -> None:
        assert self._consumer is not None
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            watermark = self._watermarks.get(tp.partition)
            if highwater is None or watermark is None:
                continue
            self._lagging[tp.partition] = highwater - watermark.position > self.config.lag_threshold

    async def _commit_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.config.commit_interval_ms / 1000.0)
            try:
                await self.commit()
            except Exception:
                log.exception("offset commit failed; will retry")

    async def commit(self, partitions: list[int] | None = None) -> None:
        """Commit each partition's watermark if it advanced."""
        consumer = self._consumer
        if consumer is None:
            return
        offsets = {}
        for partition in partitions if partitions is not None else list(self._watermarks):
            watermark = self._watermarks.get(partition)
            if watermark is None:
                continue
            offset = watermark.committable()
            if offset > self._committed.get(partition, -1):
                offsets[TopicPartition(self.config.audio_topic, partition)] = OffsetAndMetadata(offset, "")
        if offsets:
            await consumer.commit(offsets)
            for tp, meta in offsets.items():
                self._committed[tp.partition] = meta.offset

    async def on_assigned(self, partitions: set[TopicPartition]) -> None:
        assert self._consumer is not None
        for tp in partitions:
            position = await self._consumer.position(tp)
            self._watermarks[tp.partition] = PartitionWatermark(position)
            self._committed[tp.partition] = position
        log.info("assigned %s", sorted(tp.partition for tp in partitions))

    async def on_revoked(self, partitions: set[TopicPartition]) -> None:
        revoked = {tp.partition for tp in partitions}
        with contextlib.suppress(Exception):
            await self.commit(sorted(revoked))
        await self._abandon([sid for sid, o in self._open.items() if o.partition in revoked])
        for partition in revoked:
            self._watermarks.pop(partition, None)
            self._committed.pop(partition, None)
            self._lagging.pop(partition, None)
        log.info("revoked %s", sorted(revoked))


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.worker.on_assigned(assigned)
