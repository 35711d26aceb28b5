"""One assigned input partition at run time: its state machine, commit book, producer, dormant sessions.

:class:`OwnedPartition` runs one transaction of its partition (:meth:`OwnedPartition.commit`): it takes
the plan from the :class:`~pipeline.commit.CommitBook`, has
:class:`~pipeline.kafka.transactions.PartitionTransactions` run it, and settles the outcome in the
book: committed, failed (records back in front), or refused records quarantined as small dead
letters so the others go through. A transaction that hangs tells the partition's state machine that
Kafka is not taking writes (see :meth:`~pipeline.partition.Partition.write_stalled`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time

from aiokafka import TopicPartition

from pipeline import metrics
from pipeline.commit import CommitBook
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
    def __init__(self, tp: TopicPartition, state: Partition, book: CommitBook, txn: PartitionTransactions) -> None:
        self.tp, self.state, self.book, self.txn = tp, state, book, txn
        self.committing_since: float | None = None  # a transaction is in flight since (monotonic)
        self.dormant: dict[str, float] = {}  # open checkpoints not resumed since the assignment → since
        self.last_record_ms: int | None = None  # timestamp of the newest record read
        self._one_at_a_time = asyncio.Lock()  # the commit loop and a rebalance callback may both commit

    async def commit(self, settings: Settings, counters: Counters, letter_bytes: int) -> Outcome:
        async with self._one_at_a_time:
            return await self._commit(settings, counters, letter_bytes)

    async def _commit(self, settings: Settings, counters: Counters, letter_bytes: int) -> Outcome:
        plan = self.book.plan()
        self.committing_since = time.monotonic()
        # A transaction that hangs means Kafka refuses writes; say so the moment it is late, not later.
        stall = asyncio.get_running_loop().call_later(settings.write_stall_ms / 1000, self._stalled)
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
            counters.transaction_failures += 1
            return Outcome.FAILED
        except BaseException:  # also a cancellation: the records must never be lost
            self.book.failed(plan)
            counters.transaction_failures += 1
            return Outcome.FAILED
        finally:
            stall.cancel()
            self.committing_since = None
            if self.state.state is not PartitionState.RELEASED:
                self.state.write_ok(time.monotonic())
        self.book.committed(plan)
        counters.transactions += not plan.empty
        metrics.observe_committed(plan)
        return Outcome.COMMITTED

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
