"""OwnedPartition: one transaction at a time, whoever asks (the commit loop or a rebalance callback)."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from pipeline.commit import CommitBook, CommitPlan, OutRecord
from pipeline.owned import Outcome, OwnedPartition
from pipeline.partition import Partition
from pipeline.settings import Settings
from pipeline.snapshot import Counters


class SlowTransactions:
    """Stands in for PartitionTransactions (our own unit): each commit waits until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.plans: list[CommitPlan] = []

    async def commit(self, plan: CommitPlan) -> None:
        self.plans.append(plan)
        await self.release.wait()


async def test_two_commits_at_once_run_one_after_the_other() -> None:
    """Regression: a rebalance callback committing while the commit loop's transaction was in flight
    crashed the worker with 'a plan is already in flight'."""
    settings = Settings.load(env={})
    txn = SlowTransactions()
    book = CommitBook.resumed(0, "s", 0, {})
    owned = OwnedPartition(TopicPartition("a", 0), Partition(0, settings.flow_limits(), 0.0), book, txn)  # type: ignore[arg-type]
    counters = Counters()
    book.add([OutRecord("t", "k", b"1")])
    first = asyncio.create_task(owned.commit(settings, counters, 100_000))
    await asyncio.sleep(0.01)
    book.add([OutRecord("t", "k", b"2")])
    second = asyncio.create_task(owned.commit(settings, counters, 100_000))
    await asyncio.sleep(0.01)
    assert len(txn.plans) == 1
    txn.release.set()
    assert await asyncio.gather(first, second) == [Outcome.COMMITTED, Outcome.COMMITTED]
    assert [[r.value for r in plan.records] for plan in txn.plans] == [[b"1"], [b"2"]]
