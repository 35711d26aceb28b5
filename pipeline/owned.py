"""One assigned input partition at run time: its state machine, commit book, producer, dormant sessions.

:class:`OwnedPartition` runs one transaction of its partition (:meth:`OwnedPartition.commit`): it takes
the plan from the :class:`~pipeline.commit.CommitBook`, has
:class:`~pipeline.kafka.transactions.PartitionTransactions` run it, and settles the outcome in the
book: committed, failed (records back in front), or refused records quarantined as small dead
letters so the others go through. A transaction that hangs tells the partition's state machine that
Kafka is not taking writes (see :meth:`~pipeline.partition.Partition.write_stalled`).

With eager sends (``STT_EAGER_SENDS``, on by default), :meth:`OwnedPartition.kick` (called whenever
records join the book) has one background task send what the book hands out
(:meth:`~pipeline.commit.CommitBook.to_send`) into the open transaction at once. One lock orders those
sends and the commit, so a plan is never taken while a batch the book handed out is still on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time

from aiokafka import TopicPartition

from pipeline import metrics
from pipeline.commit import CommitBook, CommitPlan
from pipeline.kafka.transactions import Fenced, PartitionTransactions, RecordsRefused
from pipeline.letters import quarantine_letter
from pipeline.partition import Partition, PartitionState
from pipeline.settings import Settings
from pipeline.snapshot import Counters, PartitionSnapshot

log = logging.getLogger("pipeline.owned")


class Outcome(enum.Enum):
    COMMITTED = "committed"
    FAILED = "failed"
    FENCED = "fenced"


class OwnedPartition:
    def __init__(
        self, tp: TopicPartition, state: Partition, book: CommitBook, txn: PartitionTransactions, *, eager: bool = True
    ) -> None:
        self.tp, self.state, self.book, self.txn = tp, state, book, txn
        self.eager = eager
        self.dormant: dict[str, float] = {}  # open checkpoints not resumed since the assignment → since
        self.last_record_ms: int | None = None  # timestamp of the newest record read
        self._io = asyncio.Lock()  # eager sends and the commit, one at a time
        self._sender: asyncio.Task[None] | None = None

    def kick(self) -> None:
        """Records joined the book: with eager sends, send them into the open transaction now."""
        if self.eager and self._sender is None and self.book.unsent and not self.book.in_flight:
            self._sender = asyncio.create_task(self._send(), name=f"send:{self.tp.partition}")

    async def _send(self) -> None:
        try:
            while True:
                async with self._io:
                    batch = self.book.to_send()
                    if not batch:
                        return
                    await self.txn.send(batch)
        finally:
            self._sender = None

    async def stop_sending(self) -> None:
        """The partition is being let go: stop the eager sender (its open transaction is not committed)."""
        sender = self._sender
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    async def commit(self, settings: Settings, counters: Counters, letter_bytes: int) -> Outcome:
        # A transaction that hangs means Kafka refuses writes; say so the moment it is late, not later.
        stall = asyncio.get_running_loop().call_later(settings.write_stall_ms / 1000, self._stalled)
        try:
            async with self._io:
                return await self._commit(settings, counters, letter_bytes)
        finally:
            stall.cancel()
            self.kick()  # records added while the plan was in flight

    async def _commit(self, settings: Settings, counters: Counters, letter_bytes: int) -> Outcome:
        plan = self.book.plan()
        started = time.monotonic()
        try:
            await self.txn.commit(plan)
        except Fenced:
            self.book.failed(plan)
            counters.fenced += 1
            log.error("partition %d was fenced by another worker", self.tp.partition)
            return Outcome.FENCED
        except RecordsRefused as refused:
            for record in self.book.failed(plan, quarantine=refused.refused):
                counters.quarantined += 1
                log.error("QUARANTINED a record Kafka refuses (%s) for %s, key %r", refused, record.topic, record.key)
                self.book.add([quarantine_letter(settings, letter_bytes, self.tp, plan.offset, record, str(refused))])
                # sent with the next transaction (kicked once this commit is over)
            counters.transaction_failures += 1
            return Outcome.FAILED
        except asyncio.CancelledError:  # settled by what Kafka did, then the cancellation goes on
            if self.txn.committed(plan):
                self._committed(plan, counters, started)
            else:
                self.book.failed(plan)
                counters.transaction_failures += 1
            raise
        except Exception:
            self.book.failed(plan)
            counters.transaction_failures += 1
            return Outcome.FAILED
        finally:
            if self.state.state is not PartitionState.RELEASED:
                self.state.write_ok(time.monotonic())
        self._committed(plan, counters, started)
        return Outcome.COMMITTED

    def _committed(self, plan: CommitPlan, counters: Counters, started: float) -> None:
        self.book.committed(plan)
        if not plan.empty:
            counters.transactions += 1
            metrics.TRANSACTION_S.observe(time.monotonic() - started)
        metrics.observe_committed(plan)

    def _stalled(self) -> None:
        if self.state.state is not PartitionState.RELEASED:
            self.state.write_stalled()

    def snapshot(self, *, highwater: int | None, open_sessions: int, deferred: int, queued: int) -> PartitionSnapshot:
        position = self.book.watermark.position
        return PartitionSnapshot(
            partition=self.tp.partition,
            state=self.state.state.value,
            live=self.state.live,
            position=position,
            watermark=self.book.watermark.committable(),
            committed=self.book.committed_offset,
            behind=None if highwater is None else max(0, highwater - position),
            open_sessions=open_sessions,
            dormant_sessions=len(self.dormant),
            deferred_records=deferred,
            queued_bytes=queued,
            pending_records=self.book.pending,
            last_record_ms=self.last_record_ms,
        )
