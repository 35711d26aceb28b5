"""The partitions a worker owns: the rebalance callbacks, shutdown hand-off, and one partition's commit.

:class:`Assignment` keeps the worker's :class:`~pipeline.owned.OwnedPartition` per assigned input
partition and changes it only here. Eager rebalancing revokes every partition, also those that come
back, so :meth:`Assignment.on_revoked` pauses, lets draining sessions finish within
``revoke_grace_s``, commits and freezes, keeping sessions and sockets; :meth:`Assignment.on_assigned`
then keeps what came back, drops what did not, and sets up new partitions (their previous owners fenced
first, checkpoints loaded, reading from the committed offset). :meth:`Assignment.hand_off` lets
partitions go at shutdown; a partition whose transaction is fenced is dropped without committing.
:class:`Listener` is the aiokafka listener that calls the callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from pipeline.commit import CommitBook, Mark
from pipeline.kafka.checkpoints import load_checkpoints
from pipeline.kafka.committed import committed_offsets
from pipeline.kafka.transactions import PartitionTransactions
from pipeline.owned import Outcome, OwnedPartition
from pipeline.partition import Partition
from pipeline.router import Router
from pipeline.sessions import SessionTable
from pipeline.settings import Settings
from pipeline.snapshot import Counters

log = logging.getLogger("pipeline.worker")  # the worker's log lines, under the name they always had


class Assignment:
    def __init__(
        self,
        settings: Settings,
        counters: Counters,
        router: Router,
        sessions: SessionTable,
        letter_bytes: Callable[[], int],
    ) -> None:
        self.settings, self.counters = settings, counters
        self.parts: dict[int, OwnedPartition] = {}
        self.joined = False  # true from an assignment until the next revocation
        self.consumer: AIOKafkaConsumer | None = None
        self._revoked: set[int] = set()
        self._router, self._sessions, self._letter_bytes = router, sessions, letter_bytes

    async def commit(self, owned: OwnedPartition) -> bool:
        """One transaction of ``owned``, with what its sessions hand over now; fenced: dropped."""
        for current in self._sessions.in_partition(owned.tp.partition):
            self._sessions.hand_over(current, current.session.take())
        outcome = await owned.commit(self.settings, self.counters, self._letter_bytes())
        if outcome is Outcome.FENCED:
            await self._drop(owned.tp.partition)
        return outcome is Outcome.COMMITTED

    async def on_assigned(self, assigned_tps: set[TopicPartition]) -> None:
        consumer = self.consumer
        assert consumer is not None
        settings = self.settings
        assigned = {tp.partition for tp in assigned_tps}
        revoked = self._revoked & set(self.parts)  # not those fenced and dropped since
        kept, lost = revoked & assigned, revoked - assigned
        self._revoked = set()
        for partition in sorted(lost):  # committed at revocation; the new owner resumes from there
            await self._drop(partition)
        for partition in sorted(kept):  # sessions and sockets carry on; re-read records are skipped
            owned = self.parts[partition]
            owned.state.keep(owned.book.watermark.position)
            self.counters.partitions_kept += 1
        new = sorted(p for p in assigned if p not in self.parts)
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
            self.parts[partition] = owned
            self._router.assign(partition, position)
        self.joined = True
        log.info("assigned %s, kept %s, gave up %s", new, sorted(kept), sorted(lost))

    async def _starts(self, tps: list[TopicPartition]) -> dict[TopicPartition, tuple[int, Mark | None]]:
        """Where newly assigned partitions start: the committed offset, else the beginning; and the mark
        committed with the offset (None: none)."""
        consumer = self.consumer
        assert consumer is not None
        starts = await committed_offsets(consumer, tps)
        missing = [tp for tp, c in starts.items() if c.offset is None]
        beginnings = await consumer.beginning_offsets(missing) if missing else {}
        return {tp: (int(beginnings[tp]) if c.offset is None else c.offset, c.mark) for tp, c in starts.items()}

    async def on_revoked(self, revoked_tps: set[TopicPartition]) -> None:
        """Eager rebalancing revokes every partition, also those that come back. So: pause, give
        drains their grace, commit, freeze, and keep the sessions and sockets until the assignment
        says which partitions stay."""
        self.joined = False
        revoked = sorted(tp.partition for tp in revoked_tps if tp.partition in self.parts)
        parts = [self.parts[p] for p in revoked if self.parts[p].state.owned]  # not those frozen already
        await self._settle(parts)
        for owned in self._still_owned(parts):  # a fenced partition was dropped meanwhile
            owned.state.revoke(time.monotonic())
        self._revoked |= set(revoked)

    async def _settle(self, parts: list[OwnedPartition], *, close: bool = False) -> None:
        """Pause, give draining sessions the grace period, optionally close the sockets, commit."""
        consumer = self.consumer
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
                        if await self.commit(owned):
                            break

    async def hand_off(self, partitions: list[int]) -> None:
        """Shutdown: pause, let in-flight drains finish within the grace period, close sockets, commit."""
        parts = [self.parts[p] for p in partitions if p in self.parts]
        started = time.monotonic()
        await self._settle(parts, close=True)
        for owned in parts:
            await owned.stop_sending()
        for owned in self._still_owned(parts):
            await owned.txn.stop()
            owned.state.release()
            self.parts.pop(owned.tp.partition, None)
            self._router.unassign(owned.tp.partition)
        log.info("handed off %s in %.2f s", [o.tp.partition for o in parts], time.monotonic() - started)

    def _still_owned(self, parts: list[OwnedPartition]) -> list[OwnedPartition]:
        return [o for o in parts if self.parts.get(o.tp.partition) is o]

    async def _drop(self, partition: int) -> None:
        """The partition is lost (revoked for good, or fenced): stop its sessions, commit nothing."""
        owned = self.parts.pop(partition, None)
        await self._sessions.close(self._sessions.in_partition(partition))
        self._router.unassign(partition)
        if owned is not None:
            owned.state.release()
            await owned.stop_sending()
            await owned.txn.stop()


class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, assignment: Assignment) -> None:
        self.assignment = assignment

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.assignment.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.assignment.on_assigned(assigned)
