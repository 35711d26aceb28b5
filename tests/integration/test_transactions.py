"""PartitionTransactions against the real broker: atomicity, retry, and cancellation mid-transaction."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.kafka.transactions import Fenced, PartitionTransactions

pytestmark = pytest.mark.kafka


async def topics(bootstrap: str, *names: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 1, 1) for n in names])
    finally:
        await admin.close()


async def committed_values(bootstrap: str, topic: str, expect: int) -> list[dict[str, object]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", isolation_level="read_committed"
    )
    await consumer.start()
    out: list[dict[str, object]] = []
    try:
        async with asyncio.timeout(20):
            while len(out) < expect:
                for items in (await consumer.getmany(timeout_ms=200)).values():
                    out += [orjson.loads(i.value) for i in items if i.value is not None]
        extra = await consumer.getmany(timeout_ms=1000)  # nothing more may be visible
        out += [orjson.loads(i.value) for items in extra.values() for i in items if i.value is not None]
    finally:
        await consumer.stop()
    return out


async def test_cancelled_transaction_keeps_its_records_for_the_next_one(kafka_bootstrap: str) -> None:
    tag = uuid.uuid4().hex[:8]
    out, inp = f"out-{tag}", f"in-{tag}"
    await topics(kafka_bootstrap, out, inp)
    txn = PartitionTransactions(kafka_bootstrap, f"g-{tag}", TopicPartition(inp, 0))
    await txn.start()
    try:
        acks = txn.add([(out, "k", {"n": 1}), (out, "k", {"n": 2})])
        producer = txn._producer
        assert producer is not None
        real_commit = producer.commit_transaction
        entered = asyncio.Event()

        async def hang() -> None:
            entered.set()
            await asyncio.Event().wait()

        producer.commit_transaction = hang  # type: ignore[method-assign]  # stop it mid-transaction
        task = asyncio.create_task(txn.commit(lambda: (None, [])))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        producer.commit_transaction = real_commit  # type: ignore[method-assign]
        assert txn.pending == 2 and not acks.done.done()
        for _ in range(5):
            if await txn.commit(lambda: (5, [])) is not None:
                break
        await asyncio.wait_for(acks.done, 10)
        assert await committed_values(kafka_bootstrap, out, 2) == [{"n": 1}, {"n": 2}]
    finally:
        await txn.stop()


async def test_outputs_checkpoints_and_offset_commit_together_and_a_new_owner_fences(kafka_bootstrap: str) -> None:
    tag = uuid.uuid4().hex[:8]
    out, inp, sessions = f"out-{tag}", f"in-{tag}", f"ses-{tag}"
    await topics(kafka_bootstrap, out, inp, sessions)
    group = f"g-{tag}"
    first = PartitionTransactions(kafka_bootstrap, group, TopicPartition(inp, 0))
    await first.start()
    first.add([(out, "s", {"n": 1})])
    done = await first.commit(lambda: (7, [(sessions, "s", {"checkpoint": 1})]))
    assert done == [(sessions, "s", {"checkpoint": 1})]
    assert await committed_values(kafka_bootstrap, sessions, 1) == [{"checkpoint": 1}]
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group)
    await consumer.start()
    try:
        assert await consumer.committed(TopicPartition(inp, 0)) == 7
    finally:
        await consumer.stop()
    second = PartitionTransactions(kafka_bootstrap, group, TopicPartition(inp, 0))
    await second.start()  # the next owner of the partition
    try:
        first.add([(out, "s", {"n": "zombie"})])
        with pytest.raises(Fenced):
            await first.commit(lambda: (8, []))
        assert await committed_values(kafka_bootstrap, out, 1) == [{"n": 1}]
    finally:
        await first.stop()
        await second.stop()
