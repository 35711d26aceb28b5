"""PartitionTransactions against the real broker: atomicity, retry, and cancellation mid-transaction."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import replace

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from pipeline.commit import CommitBook, Mark, OutRecord
from pipeline.contract import Checkpoint
from pipeline.kafka.committed import Committed, committed_offsets
from pipeline.kafka.transactions import Fenced, PartitionTransactions, RecordsRefused, TransactionFailed
from pipeline.owned import Outcome, OwnedPartition
from pipeline.partition import Partition
from pipeline.settings import Settings
from pipeline.snapshot import Counters
from tests.unit.test_schemas import VALID_CHECKPOINT

pytestmark = pytest.mark.kafka


async def topics(bootstrap: str, *names: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 1, 1) for n in names])
    finally:
        await admin.close()


async def committed_values(
    bootstrap: str, topic: str, expect: int, isolation: str = "read_committed"
) -> list[dict[str, object]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", isolation_level=isolation
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


def book_for(inp: str, sessions: str) -> CommitBook:
    return CommitBook.resumed(0, sessions, 0, {})


def settings_for(bootstrap: str, group: str, **changes: object) -> Settings:
    return Settings.load(env={}).replace(bootstrap_servers=bootstrap, group_id=group, **changes)


def out(topic: str, n: object, key: str = "k") -> OutRecord:
    return OutRecord(topic, key, orjson.dumps({"n": n}))


async def test_an_interrupted_commit_settles_its_records_by_what_kafka_did(kafka_bootstrap: str) -> None:
    """A commit cancelled at any point of its transaction leaves every record committed exactly once in
    the end: records of an aborted transaction go again, those of one Kafka committed do not. The
    cancellation lands before the sends, during them, while the offsets go in, and while Kafka commits."""
    tag = uuid.uuid4().hex[:8]
    topic, inp, sessions = f"out-{tag}", f"in-{tag}", f"ses-{tag}"
    await topics(kafka_bootstrap, topic, inp, sessions)
    settings = settings_for(kafka_bootstrap, f"g-{tag}", eager_sends=False)
    tp = TopicPartition(inp, 0)
    txn = PartitionTransactions(settings, tp, sessions)
    owned = OwnedPartition(tp, Partition(0, settings.flow_limits(), time.monotonic()), book_for(inp, sessions), txn)
    counters = Counters()
    await txn.start()
    attempts = 80
    try:
        took = 0.0  # how long a transaction takes here, warm
        for n in range(-3, 0):
            owned.book.add([out(topic, n)])
            began = time.monotonic()
            assert await owned.commit(settings, counters, 10_000) is Outcome.COMMITTED
            took = time.monotonic() - began
        for n in range(attempts):
            owned.book.add([out(topic, n)])
            owned.book.consumed(n)
            task = asyncio.create_task(owned.commit(settings, counters, 10_000))
            await asyncio.sleep(1.2 * took * n / attempts)  # from before the first send to Kafka's commit
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await owned.commit(settings, counters, 10_000)  # commits what the cancelled one gave back
        for _ in range(5):
            if await owned.commit(settings, counters, 10_000) is Outcome.COMMITTED:
                break
        assert owned.book.pending == 0
        values = await committed_values(kafka_bootstrap, topic, attempts + 3)
        assert sorted(v["n"] for v in values) == list(range(-3, attempts))  # type: ignore[type-var]
    finally:
        await txn.stop()


async def test_a_partition_let_go_mid_commit_ends_that_commit_and_never_writes_again(kafka_bootstrap: str) -> None:
    """The worker lets a partition go (revoked for good, or fenced) with ``stop()`` while its commit loop
    may be committing it. Wherever that lands in the transaction, the commit ends (it does not wait
    for an answer from a producer that is gone), and the stopped transactions never start a producer
    again: a later commit writes nothing, so it cannot fence the partition's next owner."""
    tag = uuid.uuid4().hex[:8]
    topic, inp, sessions = f"out-{tag}", f"in-{tag}", f"ses-{tag}"
    await topics(kafka_bootstrap, topic, inp, sessions)
    settings = settings_for(kafka_bootstrap, f"g-{tag}", eager_sends=False)
    tp = TopicPartition(inp, 0)
    warm = PartitionTransactions(settings, tp, sessions)
    await warm.start()
    took = 0.0  # how long a transaction takes here, warm
    try:
        for _ in range(3):
            book = book_for(inp, sessions)
            book.add([out(topic, -1)])
            began = time.monotonic()
            await warm.commit(book.plan())
            took = time.monotonic() - began
    finally:
        await warm.stop()
    attempts = 24
    for n in range(attempts):
        txn = PartitionTransactions(settings, tp, sessions)
        await txn.start()
        book = book_for(inp, sessions)
        book.add([out(topic, n)])
        book.consumed(n)
        task = asyncio.create_task(txn.commit(book.plan()))
        await asyncio.sleep(1.2 * took * n / attempts)  # from before the first send to Kafka's commit
        await txn.stop()
        done, _ = await asyncio.wait({task}, timeout=20)
        assert done, f"attempt {n}: the commit still waits, {20} s after its partition was let go"
        with contextlib.suppress(TransactionFailed):
            task.result()  # committed, or ended without an answer: the next owner settles it
        book = book_for(inp, sessions)
        book.add([out(topic, "zombie")])
        with pytest.raises(TransactionFailed):
            await txn.commit(book.plan())
    owner = PartitionTransactions(settings, tp, sessions)
    await owner.start()
    try:
        book = book_for(inp, sessions)
        book.add([out(topic, "owner")])
        await owner.commit(book.plan())  # not fenced by any of the stopped ones
    finally:
        await owner.stop()
    values = await committed_values(kafka_bootstrap, topic, 4)
    assert {"n": "owner"} in values and {"n": "zombie"} not in values


async def test_a_record_kafka_refuses_is_named_and_the_others_commit(kafka_bootstrap: str) -> None:
    """A record over the producer's request size would fail every retry of its partition's transaction;
    the transaction names it, and the worker quarantines it so the others go through."""
    tag = uuid.uuid4().hex[:8]
    topic, inp, sessions = f"out-{tag}", f"in-{tag}", f"ses-{tag}"
    await topics(kafka_bootstrap, topic, inp, sessions)
    settings = settings_for(kafka_bootstrap, f"g-{tag}", max_request_size=200_000)
    txn = PartitionTransactions(settings, TopicPartition(inp, 0), sessions)
    book = book_for(inp, sessions)
    await txn.start()
    try:
        book.add([out(topic, 1), OutRecord(topic, "k", b'"' + b"x" * 300_000 + b'"'), out(topic, 3)])
        plan = book.plan()
        with pytest.raises(RecordsRefused) as refused:
            await txn.commit(plan)
        assert set(refused.value.refused) == {1}
        assert [r.value for r in book.failed(plan, quarantine=refused.value.refused)] == [plan.records[1].value]
        plan = book.plan()
        await txn.commit(plan)
        book.committed(plan)
        assert await committed_values(kafka_bootstrap, topic, 2) == [{"n": 1}, {"n": 3}]
    finally:
        await txn.stop()


async def test_outputs_checkpoints_and_offset_commit_together_and_a_new_owner_fences(kafka_bootstrap: str) -> None:
    tag = uuid.uuid4().hex[:8]
    topic, inp, sessions = f"out-{tag}", f"in-{tag}", f"ses-{tag}"
    await topics(kafka_bootstrap, topic, inp, sessions)
    group = f"g-{tag}"
    settings = settings_for(kafka_bootstrap, group)
    first = PartitionTransactions(settings, TopicPartition(inp, 0), sessions)
    book = book_for(inp, sessions)
    await first.start()
    checkpoint = Checkpoint.from_json(VALID_CHECKPOINT)
    book.add([out(topic, 1, key=checkpoint.session_id)], replace(checkpoint, resume_offset=7))
    for offset in range(8):
        book.consumed(offset)
    plan = book.plan()
    assert plan.offset == 7 and [c for _, c in plan.checkpoints] == [replace(checkpoint, resume_offset=7)]
    await first.commit(plan)
    book.committed(plan)
    stored = await committed_values(kafka_bootstrap, sessions, 1)
    assert [Checkpoint.from_json(orjson.dumps(c)) for c in stored] == [replace(checkpoint, resume_offset=7)]
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group)
    await consumer.start()
    try:
        assert await consumer.committed(TopicPartition(inp, 0)) == 7
    finally:
        await consumer.stop()
    second = PartitionTransactions(settings, TopicPartition(inp, 0), sessions)
    await second.start()  # the next owner of the partition
    try:
        book.add([out(topic, "zombie")])
        with pytest.raises(Fenced):
            await first.commit(book.plan())
        assert await committed_values(kafka_bootstrap, topic, 1) == [{"n": 1}]
    finally:
        await first.stop()
        await second.stop()


async def test_eager_sends_are_live_at_once_and_commit_with_the_plan(kafka_bootstrap: str) -> None:
    """Eager mode: a record sent into the open transaction is visible to read_uncommitted before the
    commit; the commit adds what the plan has not sent yet, and read_committed sees each once."""
    tag = uuid.uuid4().hex[:8]
    topic, inp, sessions = f"out-{tag}", f"in-{tag}", f"ses-{tag}"
    await topics(kafka_bootstrap, topic, inp, sessions)
    txn = PartitionTransactions(settings_for(kafka_bootstrap, f"g-{tag}"), TopicPartition(inp, 0), sessions)
    book = book_for(inp, sessions)
    await txn.start()
    try:
        book.add([out(topic, 1)])
        await txn.send(book.to_send())
        assert await committed_values(kafka_bootstrap, topic, 1, "read_uncommitted") == [{"n": 1}]
        book.add([out(topic, 2)])
        plan = book.plan()
        assert plan.sent == 1
        await txn.commit(plan)
        book.committed(plan)
        assert await committed_values(kafka_bootstrap, topic, 2) == [{"n": 1}, {"n": 2}]
    finally:
        await txn.stop()


async def test_an_aborted_transaction_sends_its_eager_records_again_and_commits_them_once(
    kafka_bootstrap: str,
) -> None:
    tag = uuid.uuid4().hex[:8]
    topic, inp, sessions = f"out-{tag}", f"in-{tag}", f"ses-{tag}"
    await topics(kafka_bootstrap, topic, inp, sessions)
    txn = PartitionTransactions(settings_for(kafka_bootstrap, f"g-{tag}"), TopicPartition(inp, 0), sessions)
    book = book_for(inp, sessions)
    await txn.start()
    try:
        book.add([out(topic, 1), out(topic, 2)])
        for delay in (0.0, 0.001, 0.005):  # abort (by cancellation) at different points of the commit
            await txn.send(book.to_send())
            plan = book.plan()
            assert plan.sent == 2
            task = asyncio.create_task(txn.commit(plan))
            await asyncio.sleep(delay)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                book.failed(plan)
                continue
            book.committed(plan)
            break
        for _ in range(5):
            await txn.send(book.to_send())
            plan = book.plan()
            try:
                await txn.commit(plan)
            except TransactionFailed:
                book.failed(plan)
                continue
            book.committed(plan)
            break
        assert book.pending == 0
        assert await committed_values(kafka_bootstrap, topic, 2) == [{"n": 1}, {"n": 2}]
    finally:
        await txn.stop()


async def test_the_offset_commit_carries_the_mark_and_the_next_owner_reads_it_back(kafka_bootstrap: str) -> None:
    """A dead letter commits the offset with the mark as its metadata, also when the offset stays (an
    open session holds it); the next owner's read of the committed offset returns the mark."""
    tag = uuid.uuid4().hex[:8]
    topic, inp, sessions, group = f"out-{tag}", f"in-{tag}", f"ses-{tag}", f"g-{tag}"
    await topics(kafka_bootstrap, topic, inp, sessions)
    tp = TopicPartition(inp, 0)
    txn = PartitionTransactions(settings_for(kafka_bootstrap, group), tp, sessions)
    book = book_for(inp, sessions)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    reader = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group)
    await admin.start()
    await reader.start()
    await txn.start()
    try:
        book.hold("session", 0)
        for offset in range(3):
            book.consumed(offset)
        book.add_letter(out(topic, "letter"), 2)
        plan = book.plan()
        assert (plan.offset, plan.advance, plan.mark) == (0, True, Mark(3))
        await txn.commit(plan)
        book.committed(plan)
        expected = {tp: OffsetAndMetadata(0, '{"v":1,"handled":3}')}
        async with asyncio.timeout(10):  # the commit's marker reaches the offsets a moment after the commit
            while await admin.list_consumer_group_offsets(group, partitions=[tp]) != expected:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        assert await committed_offsets(reader, [tp]) == {tp: Committed(0, Mark(3))}
    finally:
        await txn.stop()
        await reader.stop()
        await admin.close()
