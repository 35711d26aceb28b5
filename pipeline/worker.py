"""The worker: consumes `stt.audio`, runs one paced STT socket per session, publishes turns and finals.

This is the composition root: the consume loop, the commit loop, the rebalance callbacks and the
tasks. Decisions live in pure modules: each record is parsed (:mod:`pipeline.records`) and routed
(:mod:`pipeline.router`); each assigned partition is a state machine (:mod:`pipeline.partition`) whose
state says whether silence may be filled; each transaction is a plan taken in one synchronous step
(:mod:`pipeline.commit`); sessions and their tasks live in :mod:`pipeline.sessions`.

No input can stop the worker: a record that cannot be parsed or routed goes to the dead-letter topic,
a record aiokafka cannot decode is skipped and dead-lettered by offset (:mod:`pipeline.kafka.fetch`),
a session whose task crashes ends ``failed``. Read it through :meth:`Worker.snapshot`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from pipeline import metrics
from pipeline.commit import CommitBook, Mark
from pipeline.kafka.checkpoints import load_checkpoints
from pipeline.kafka.clients import worker_consumer
from pipeline.kafka.committed import committed_offsets
from pipeline.kafka.fetch import CorruptRecord, fetch
from pipeline.kafka.probe import group_link, read_link
from pipeline.kafka.topics import ensure_topics, topic_limits
from pipeline.kafka.transactions import PartitionTransactions
from pipeline.letters import LETTER_ENVELOPE_BYTES, corrupt_letter, dead_letter_record
from pipeline.limits import SizeBudget
from pipeline.logs import log_context
from pipeline.owned import Outcome, OwnedPartition
from pipeline.partition import FlowAction, Partition, PartitionState
from pipeline.records import InputLimits, Rejected, parse
from pipeline.redact import scrub
from pipeline.router import Decision, Router
from pipeline.session import Resume
from pipeline.sessions import Connect, OpenSession, SessionTable
from pipeline.settings import TEXT_ENVELOPE_BYTES, Settings
from pipeline.snapshot import Counters, WorkerSnapshot
from pipeline.stt.client import connector
from pipeline.stt.link import SttLink

log = logging.getLogger("pipeline.worker")

OBSERVE_S = 0.05  # how often partition states see the consumer's view (liveness thresholds are ≥ 250 ms)


class Worker:
    def __init__(self, settings: Settings, *, connect: Connect | None = None) -> None:
        self.settings = settings
        self.counters = Counters()
        self._parts: dict[int, OwnedPartition] = {}
        self._revoked: set[int] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._running = self._joined = False
        self._letter_bytes = settings.max_request_size - LETTER_ENVELOPE_BYTES
        self._limits = InputLimits(settings.max_key_bytes, settings.max_header_bytes)
        self._router = Router(settings.max_sessions, settings.completed_memory)
        key = settings.stt_api_key()
        self._stt_link = SttLink()
        self._sessions = SessionTable(
            topics={"turns": settings.turns_topic, "transcripts": settings.transcripts_topic},
            session_config=settings.session_config(),
            connect=self._stt_link.watch(connect or connector(settings)),
            book_of=lambda p: self._parts[p].book if p in self._parts else None,
            live=lambda p: p in self._parts and self._parts[p].state.live,
            ended=self._session_ended,
            counters=self.counters,
            scrub=lambda text: scrub(text, [key] if key else []),
            added=self._added,
        )

    def _added(self, partition: int) -> None:
        """Records joined ``partition``'s book: send them now if sends are eager."""
        owned = self._parts.get(partition)
        if owned is not None:
            owned.kick()

    def snapshot(self) -> WorkerSnapshot:
        """Partitions and their states, open sessions, lag, queued bytes and counters, as values."""
        queued = self._sessions.queued_bytes()
        consumer = self._consumer
        parts = []
        for number, owned in sorted(self._parts.items()):
            parts.append(
                owned.snapshot(
                    highwater=consumer.highwater(owned.tp) if consumer is not None else None,
                    open_sessions=len(self._sessions.in_partition(number)),
                    deferred=self._router.deferred(number),
                    queued=queued.get(number, 0),
                )
            )
        disconnected = any(o.state.state is PartitionState.DISCONNECTED for o in self._parts.values())
        return WorkerSnapshot(
            self._running,
            self._joined,
            tuple(parts),
            self._sessions.snapshot(),
            self.counters,
            broker_reachable=consumer is not None and group_link(consumer) and not disconnected,
            stt_last_ok=self._stt_link.last_ok,
            stt_last_failure=self._stt_link.last_failure,
        )

    # -- the consume loop ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        await ensure_topics(settings)
        budget = SizeBudget.from_configs(settings.max_request_size, await topic_limits(settings))
        text_limit = min(budget.limit(settings.turns_topic), budget.limit(settings.transcripts_topic))
        self._sessions.session_config = replace(
            settings.session_config(), max_text_bytes=text_limit - TEXT_ENVELOPE_BYTES
        )
        self._letter_bytes = budget.limit(settings.dead_letter_topic) - LETTER_ENVELOPE_BYTES
        consumer = worker_consumer(settings)
        self._consumer = consumer
        consumer.subscribe([settings.audio_topic], listener=_Listener(self))
        await consumer.start()
        self._running = True
        log.info("worker started: %r", settings)
        committer = asyncio.create_task(self._commit_loop(stop), name="committer")
        observe_at = 0.0
        try:
            while not stop.is_set():
                if committer.done():
                    committer.result()  # surfaces an unexpected failure of the commit loop
                outcome = await fetch(consumer, timeout_ms=100, max_records=500)
                for tp, items in outcome.in_offset_order().items():
                    owned = self._parts.get(tp.partition)
                    if owned is None:
                        # fetched before our assignment callback finished (or after revocation): read it
                        # again once the partition is set up
                        if tp in consumer.assignment():
                            consumer.seek(tp, items[0].offset)
                            consumer.pause(tp)  # resumed once the partition is set up
                        continue
                    owned.state.records_fetched(time.monotonic())
                    for item in items:
                        with log_context(partition=tp.partition, offset=item.offset):
                            if isinstance(item, CorruptRecord):
                                self._corrupt(owned, item)
                            else:
                                owned.last_record_ms = item.timestamp
                                self._handle(owned, item)
                now = time.monotonic()
                if now >= observe_at:  # at most every OBSERVE_S, not after every fetch
                    observe_at = now + OBSERVE_S
                    await self._observe(consumer)
        finally:
            stop.set()  # the commit loop finishes its current transaction and returns; never cancel it
            with contextlib.suppress(Exception):
                await committer
            await self._hand_off(list(self._parts))
            await consumer.stop()
            await self._hand_off(list(self._parts))  # assigned while stopping: nothing was read from them
            self._running = False
            log.info("worker stopped: %s", self.counters)

    def _handle(self, owned: OwnedPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        """Route one record. Whatever the record holds, it ends handled, skipped or dead-lettered."""
        partition, offset = owned.tp.partition, record.offset
        if self._router.seen(partition, offset):
            return  # read before a rebalance or a rewind, and handled then
        self.counters.records += 1
        metrics.RECORDS.inc()
        session_id: str | None = None
        try:
            message = parse(record.key, record.headers, record.value, limits=self._limits, timestamp=record.timestamp)
            session_id = message.session_id
            route = self._router.route(partition, offset, message, owned.book.checkpoint)
            decision = route.decision
            if decision is Decision.REJECT:
                raise Rejected(route.reason, route.detail)
            if decision is Decision.DEFER:
                self.counters.deferred += 1
            elif decision is Decision.SKIP:
                self.counters.replay_skipped += route.reason != "handled"
            elif decision is Decision.DUPLICATE:
                self.counters.duplicates += 1
            elif decision in (Decision.OPEN, Decision.RESUME):
                resume = None if route.checkpoint is None else Resume.from_checkpoint(route.checkpoint)
                fmt = route.checkpoint.format if route.checkpoint is not None else route.format
                assert fmt is not None
                owned.dormant.pop(session_id, None)
                self.counters.sessions_resumed += decision is Decision.RESUME
                self._router.opened(session_id, partition)
                current = self._sessions.start(session_id, fmt, partition, offset, resume)
                self._sessions.deliver(current, message, offset)
            else:
                current_open = self._sessions.get(session_id)
                assert current_open is not None
                if not self._sessions.deliver(current_open, message, offset):
                    self.counters.duplicates += 1
        except Rejected as rejected:
            self._router.read(partition, offset)
            self._dead_letter(owned, record, rejected.reason, rejected.detail, session_id)
        except Exception as exc:  # a bug meets a record: that record is dead-lettered, nothing else stops
            log.exception("p%d@%d could not be handled", partition, offset)
            self._router.read(partition, offset)
            self._dead_letter(owned, record, "unparseable", f"{type(exc).__name__}: {exc}", session_id)
        owned.book.undecided(self._router.deferred_floor(partition))
        owned.book.consumed(offset)

    def _dead_letter(
        self,
        owned: OwnedPartition,
        record: ConsumerRecord[bytes, bytes],
        reason: str,
        detail: str,
        session_id: str | None,
    ) -> None:
        if owned.book.lettered(record.offset):  # replayed after a crash: its letter is committed already
            self.counters.letters_replayed += 1
            log.info("p%d@%d was dead-lettered by the previous owner (%s)", owned.tp.partition, record.offset, reason)
            return
        self.counters.dead_letters += 1
        metrics.DEAD_LETTERS.labels(reason).inc()
        log.warning("dead letter p%d@%d %s: %s", owned.tp.partition, record.offset, reason, scrub(detail, [], 200))
        letter = dead_letter_record(self.settings, self._letter_bytes, owned.tp, record, reason, detail, session_id)
        owned.book.add_letter(letter, record.offset)
        owned.kick()

    def _corrupt(self, owned: OwnedPartition, corrupt: CorruptRecord) -> None:
        """A record aiokafka could not decode was skipped: dead-letter what is known of it."""
        self.counters.corrupt_records += 1
        log.error("skipped undecodable record p%d@%d: %s", corrupt.tp.partition, corrupt.offset, corrupt.error)
        if not self._router.seen(corrupt.tp.partition, corrupt.offset):
            if owned.book.lettered(corrupt.offset):  # replayed after a crash: its letter is committed already
                self.counters.letters_replayed += 1
            else:
                self.counters.dead_letters += 1
                metrics.DEAD_LETTERS.labels("unparseable").inc()
                owned.book.add_letter(corrupt_letter(self.settings, self._letter_bytes, corrupt), corrupt.offset)
                owned.kick()
            owned.book.consumed(corrupt.offset)
            self._router.read(corrupt.tp.partition, corrupt.offset)

    async def _observe(self, consumer: AIOKafkaConsumer) -> None:
        """Feed each partition's state machine what the consumer saw; apply backpressure; re-read
        deferred records once a session slot is free."""
        now = time.monotonic()
        queued = self._sessions.queued_bytes()
        assignment = consumer.assignment()
        for number, owned in self._parts.items():
            if not owned.state.owned or owned.tp not in assignment:
                continue
            link = read_link(consumer, owned.tp)
            owned.state.fetch_answered(now, link.answered_ms_ago, connected=link.connected)
            highwater = consumer.highwater(owned.tp)
            position = await consumer.position(owned.tp)
            owned.state.position_reached(position)
            owned.state.observe_lag(None if highwater is None else highwater - position)
            action = owned.state.observe_queued(queued.get(number, 0))
            if action is FlowAction.PAUSE:
                consumer.pause(owned.tp)
                self.counters.pauses += 1
            elif action is FlowAction.RESUME:
                consumer.resume(owned.tp)
                self.counters.resumes += 1
            rewind = self._router.rewind(number) if owned.state.catch_up_to is None else None
            if rewind is not None:
                consumer.seek(owned.tp, rewind)
                owned.state.catch_up(self._router.frontier(number))

    def _session_ended(self, current: OpenSession) -> None:
        self._router.ended(current.session.session_id, current.last_seq)

    # -- transactions and guards -----------------------------------------------------------------

    async def _commit(self, owned: OwnedPartition) -> bool:
        for current in self._sessions.in_partition(owned.tp.partition):
            self._sessions.hand_over(current, current.session.take())
        outcome = await owned.commit(self.settings, self.counters, self._letter_bytes)
        if outcome is Outcome.FENCED:
            await self._drop(owned.tp.partition)
        return outcome is Outcome.COMMITTED

    async def _commit_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.commit_interval_ms / 1000.0)
            if stop.is_set():
                return
            self._guards()
            await self.commit()

    async def commit(self) -> None:
        """Commit every owned partition now, concurrently (each has its own transactional producer)."""
        await asyncio.gather(*(self._commit(o) for o in list(self._parts.values()) if o.state.owned))

    def _guards(self) -> None:
        settings = self.settings
        self._sessions.guard(settings.session_idle_timeout_s, settings.session_max_s)
        now = time.monotonic()
        for owned in self._parts.values():
            for session_id, since in list(owned.dormant.items()):
                if now - since > settings.session_idle_timeout_s and not self._sessions.get(session_id):
                    del owned.dormant[session_id]
                    self._sessions.truncate_dormant(owned.tp.partition, owned.book.checkpoint(session_id))

    # -- rebalancing and shutdown ----------------------------------------------------------------

    async def on_assigned(self, assigned_tps: set[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        settings = self.settings
        assigned = {tp.partition for tp in assigned_tps}
        revoked = self._revoked & set(self._parts)  # not those fenced and dropped since
        kept, lost = revoked & assigned, revoked - assigned
        self._revoked = set()
        for partition in sorted(lost):  # committed at revocation; the new owner resumes from there
            await self._drop(partition)
        for partition in sorted(kept):  # sessions and sockets carry on; re-read records are skipped
            owned = self._parts[partition]
            owned.state.keep(owned.book.watermark.position)
            self.counters.partitions_kept += 1
        new = sorted(p for p in assigned if p not in self._parts)
        txns = {}
        for partition in new:  # fence the previous owners first: their open transactions end now
            tp = TopicPartition(settings.audio_topic, partition)
            txns[partition] = PartitionTransactions(settings, tp, settings.sessions_topic)
            await txns[partition].start()
        loaded = await load_checkpoints(settings, settings.sessions_topic, new)
        now = time.monotonic()
        limits = settings.flow_limits()
        starts = await self._starts([TopicPartition(settings.audio_topic, p) for p in new])
        for partition in new:
            tp = TopicPartition(settings.audio_topic, partition)
            position, mark = starts[tp]
            consumer.seek(tp, position)  # whatever a fetch in flight did meanwhile, start here
            consumer.resume(tp)
            book = CommitBook.resumed(partition, settings.sessions_topic, position, loaded[partition], mark)
            owned = OwnedPartition(
                tp, Partition(partition, limits, now), book, txns[partition], eager=settings.eager_sends
            )
            owned.dormant = {s: now for s, c in loaded[partition].items() if c.status == "open"}
            self._parts[partition] = owned
            self._router.assign(partition, position)
        self._joined = True
        log.info("assigned %s, kept %s, gave up %s", new, sorted(kept), sorted(lost))

    async def _starts(self, tps: list[TopicPartition]) -> dict[TopicPartition, tuple[int, Mark | None]]:
        """Where newly assigned partitions start: the committed offset, else the beginning; and the mark
        committed with the offset (None: none)."""
        consumer = self._consumer
        assert consumer is not None
        starts = await committed_offsets(consumer, tps)
        missing = [tp for tp, c in starts.items() if c.offset is None]
        beginnings = await consumer.beginning_offsets(missing) if missing else {}
        return {tp: (int(beginnings[tp]) if c.offset is None else c.offset, c.mark) for tp, c in starts.items()}

    async def on_revoked(self, revoked_tps: set[TopicPartition]) -> None:
        """Eager rebalancing revokes every partition, also those that come back. So: pause, give
        drains their grace, commit, freeze, and keep the sessions and sockets until the assignment
        says which partitions stay."""
        self._joined = False
        revoked = sorted(tp.partition for tp in revoked_tps if tp.partition in self._parts)
        parts = [self._parts[p] for p in revoked if self._parts[p].state.owned]  # not those frozen already
        await self._settle(parts)
        for owned in self._still_owned(parts):  # a fenced partition was dropped meanwhile
            owned.state.revoke(time.monotonic())
        self._revoked |= set(revoked)

    async def _settle(self, parts: list[OwnedPartition], *, close: bool = False) -> None:
        """Pause, give draining sessions the grace period, optionally close the sockets, commit."""
        consumer = self._consumer
        if consumer is not None:
            with contextlib.suppress(Exception):
                consumer.pause(*(o.tp for o in parts if o.tp in consumer.assignment()))
        owned_numbers = {o.tp.partition for o in parts}
        deadline = time.monotonic() + self.settings.revoke_grace_s
        while time.monotonic() < deadline:
            draining = [
                o for p in owned_numbers for o in self._sessions.in_partition(p) if o.session.phase != "streaming"
            ]
            if not draining:
                break
            await asyncio.sleep(0.05)
        if close:
            await self._sessions.close([o for p in owned_numbers for o in self._sessions.in_partition(p)])
        for owned in parts:
            if owned.state.owned:
                with contextlib.suppress(Exception):
                    for _ in range(3):
                        if await self._commit(owned):
                            break

    async def _hand_off(self, partitions: list[int]) -> None:
        """Shutdown: pause, let in-flight drains finish within the grace period, close sockets, commit."""
        parts = [self._parts[p] for p in partitions if p in self._parts]
        started = time.monotonic()
        await self._settle(parts, close=True)
        for owned in parts:
            await owned.stop_sending()
        for owned in self._still_owned(parts):
            await owned.txn.stop()
            owned.state.release()
            self._parts.pop(owned.tp.partition, None)
            self._router.unassign(owned.tp.partition)
        log.info("handed off %s in %.2f s", [o.tp.partition for o in parts], time.monotonic() - started)

    def _still_owned(self, parts: list[OwnedPartition]) -> list[OwnedPartition]:
        return [o for o in parts if self._parts.get(o.tp.partition) is o]

    async def _drop(self, partition: int) -> None:
        """The partition is lost (revoked for good, or fenced): stop its sessions, commit nothing."""
        owned = self._parts.pop(partition, None)
        await self._sessions.close(self._sessions.in_partition(partition))
        self._router.unassign(partition)
        if owned is not None:
            owned.state.release()
            await owned.stop_sending()
            await owned.txn.stop()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.worker.on_assigned(assigned)
