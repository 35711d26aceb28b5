"""The worker: consumes `stt.audio`, runs one paced STT socket per session, publishes turns and finals.

This is the composition root: the consume loop, the commit loop and its guards, the tasks and the
callbacks. What happens to each record read is :mod:`pipeline.intake` (parsed by :mod:`pipeline.records`,
routed by :mod:`pipeline.router`); which partitions the worker owns, the rebalance callbacks and the
hand-off at shutdown are :mod:`pipeline.assignment`. Decisions live in pure modules: each assigned
partition is a state machine (:mod:`pipeline.partition`) whose state says whether silence may be filled;
each transaction is a plan taken in one synchronous step (:mod:`pipeline.commit`); sessions and their
tasks live in :mod:`pipeline.sessions`.

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

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline import gcpauses
from pipeline.assignment import Assignment, Listener
from pipeline.cadence import CommitCadence
from pipeline.intake import Intake
from pipeline.kafka.clients import worker_consumer
from pipeline.kafka.fetch import CorruptRecord, fetch
from pipeline.kafka.probe import group_link, read_link
from pipeline.kafka.topics import ensure_topics, topic_limits
from pipeline.letters import LETTER_ENVELOPE_BYTES
from pipeline.limits import SizeBudget
from pipeline.logs import log_context
from pipeline.partition import FlowAction, PartitionState
from pipeline.redact import scrub
from pipeline.router import Router
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
        self._consumer: AIOKafkaConsumer | None = None
        self._running = False
        self._letter_bytes = settings.max_request_size - LETTER_ENVELOPE_BYTES
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
        self._assignment = Assignment(settings, self.counters, self._router, self._sessions, lambda: self._letter_bytes)
        self._parts = self._assignment.parts  # the same dict, read here; only the assignment changes it
        self._intake = Intake(settings, self.counters, self._router, self._sessions, lambda: self._letter_bytes)

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
            self._assignment.joined,
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
        self._consumer = self._assignment.consumer = consumer
        consumer.subscribe([settings.audio_topic], listener=Listener(self._assignment))
        await consumer.start()
        gcpauses.settle()
        gcpauses.observe()
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
                                self._intake.corrupt(owned, item)
                            else:
                                owned.last_record_ms = item.timestamp
                                self._intake.handle(owned, item)
                now = time.monotonic()
                if now >= observe_at:  # at most every OBSERVE_S, not after every fetch
                    observe_at = now + OBSERVE_S
                    await self._observe(consumer)
        finally:
            stop.set()  # the commit loop finishes its current transaction and returns; never cancel it
            with contextlib.suppress(Exception):
                await committer
            await self._assignment.hand_off(list(self._parts))
            await consumer.stop()
            await self._assignment.hand_off(list(self._parts))  # assigned while stopping: nothing was read from them
            self._running = False
            log.info("worker stopped: %s", self.counters)

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

    async def _commit_loop(self, stop: asyncio.Event) -> None:
        """Each owned partition commits once every ``commit_interval_ms``, the partitions spread over the
        interval (:class:`~pipeline.cadence.CommitCadence`); a commit that takes longer is followed by
        the next at once, so a record waits at most one interval plus a commit. The guards run once per
        interval. On ``stop``, the commits running finish (never cancelled) and the loop returns."""
        interval = self.settings.commit_interval_ms / 1000.0
        cadence = CommitCadence(interval)
        running: dict[int, asyncio.Task[bool]] = {}
        stopped = asyncio.ensure_future(stop.wait())
        guard_at = time.monotonic() + interval
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= guard_at:
                    guard_at = max(guard_at + interval, now)
                    self._guards()
                owned = {p: o for p, o in self._parts.items() if o.state.owned}
                for partition in cadence.due(now, owned, running):
                    running[partition] = asyncio.create_task(
                        self._assignment.commit(owned[partition]), name=f"commit:{partition}"
                    )
                wake = min(cadence.next_wake(now, running), guard_at)
                await asyncio.wait(
                    {stopped, *running.values()}, timeout=max(0.0, wake - now), return_when=asyncio.FIRST_COMPLETED
                )
                for partition, task in list(running.items()):
                    if task.done():
                        del running[partition]
                        task.result()  # an unexpected failure ends the loop, and the worker with it
        finally:
            stopped.cancel()
            await asyncio.gather(*running.values(), return_exceptions=True)

    async def commit(self) -> None:
        """Commit every owned partition now, concurrently (each has its own transactional producer)."""
        await asyncio.gather(*(self._assignment.commit(o) for o in list(self._parts.values()) if o.state.owned))

    def _guards(self) -> None:
        settings = self.settings
        self._sessions.guard(settings.session_idle_timeout_s, settings.session_max_s)
        now = time.monotonic()
        for owned in self._parts.values():
            for session_id, since in list(owned.dormant.items()):
                if now - since > settings.session_idle_timeout_s and not self._sessions.get(session_id):
                    del owned.dormant[session_id]
                    self._sessions.truncate_dormant(owned.tp.partition, owned.book.checkpoint(session_id))

    # -- rebalancing (the consumer's listener calls these through the assignment) ----------------

    async def on_assigned(self, assigned_tps: set[TopicPartition]) -> None:
        await self._assignment.on_assigned(assigned_tps)

    async def on_revoked(self, revoked_tps: set[TopicPartition]) -> None:
        await self._assignment.on_revoked(revoked_tps)
