"""The session's Kafka broker is a real, transactional Kafka: EOS primitives work end to end.

These are the guarantees the worker's exactly-once path relies on: transactional writes plus offsets
committed atomically with them, aborted data hidden from ``read_committed`` readers, and committed
group offsets that outlive the consumer (and the broker process) that committed them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from tests.support.kafka import KafkaBroker

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]


def unique(prefix: str) -> str:
    return f"it-{prefix}-{uuid.uuid4().hex[:10]}"


async def create_topic(admin: AIOKafkaAdminClient, name: str, partitions: int = 1) -> TopicPartition:
    response = await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    errors = [(entry[0], entry[1]) for entry in response.topic_errors if entry[1] != 0]
    assert not errors, f"create_topics failed: {errors}"
    return TopicPartition(name, 0)


def committed_consumer(bootstrap: str, **kwargs: object) -> AIOKafkaConsumer:
    """A group-less consumer (assign/seek only) that reads committed data only."""
    return plain_consumer(bootstrap, isolation_level="read_committed", **kwargs)


def plain_consumer(bootstrap: str, **kwargs: object) -> AIOKafkaConsumer:
    options: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "group_id": None,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
    }
    options.update(kwargs)
    return AIOKafkaConsumer(**options)


async def read_records(
    consumer: AIOKafkaConsumer, expected: int, timeout_s: float = 30.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Poll until ``expected`` records arrived (or the timeout), then once more to catch any extras."""
    records: list[ConsumerRecord[bytes, bytes]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(records) < expected and loop.time() < deadline:
        batches = await consumer.getmany(timeout_ms=500)
        for batch in batches.values():
            records.extend(batch)
    batches = await consumer.getmany(timeout_ms=500)
    for batch in batches.values():
        records.extend(batch)
    return records


async def read_partition(
    bootstrap: str, tp: TopicPartition, expected: int, isolation_level: str
) -> list[ConsumerRecord[bytes, bytes]]:
    consumer = plain_consumer(bootstrap, isolation_level=isolation_level)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        return await read_records(consumer, expected)
    finally:
        await consumer.stop()


async def end_offset(bootstrap: str, tp: TopicPartition, isolation_level: str) -> int:
    """High watermark for read_uncommitted; last stable offset (LSO) for read_committed."""
    consumer = plain_consumer(bootstrap, isolation_level=isolation_level)
    await consumer.start()
    try:
        offsets = await consumer.end_offsets([tp])
        return int(offsets[tp])
    finally:
        await consumer.stop()


async def wait_for_stable(bootstrap: str, tp: TopicPartition, timeout_s: float = 30.0) -> None:
    """Wait until no open transaction holds back the partition (LSO == high watermark)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        lso = await end_offset(bootstrap, tp, "read_committed")
        hw = await end_offset(bootstrap, tp, "read_uncommitted")
        if lso == hw:
            return
        assert loop.time() < deadline, f"{tp}: LSO {lso} stuck below high watermark {hw}"
        await asyncio.sleep(0.1)


@pytest.fixture
async def admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


async def test_transaction_commits_records_and_group_offsets_atomically(
    kafka_bootstrap: str, admin: AIOKafkaAdminClient
) -> None:
    """Consume-transform-produce: output records and the input offset commit land in one transaction."""
    src = await create_topic(admin, unique("eos-src"))
    dst = await create_topic(admin, unique("eos-dst"))
    group = unique("eos-group")

    plain = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await plain.start()
    try:
        for i in range(5):
            await plain.send_and_wait(src.topic, f"in-{i}".encode(), partition=0)
    finally:
        await plain.stop()

    source = AIOKafkaConsumer(
        src.topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=unique("eos-txn"))
    await source.start()
    await producer.start()
    try:
        inputs = await read_records(source, 5)
        assert [r.value for r in inputs] == [f"in-{i}".encode() for i in range(5)]
        next_offset = inputs[-1].offset + 1
        assert next_offset == 5

        await producer.begin_transaction()
        for record in inputs:
            assert record.value is not None
            await producer.send_and_wait(dst.topic, record.value.upper(), partition=0)
        await producer.send_offsets_to_transaction({src: next_offset}, group)

        # Inside the open transaction: the records are in the log (high watermark 5) but not stable
        # (LSO still 0), and the group's offset commit is still pending.
        assert await end_offset(kafka_bootstrap, dst, "read_uncommitted") == 5
        assert await end_offset(kafka_bootstrap, dst, "read_committed") == 0
        pending = await admin.list_consumer_group_offsets(group, partitions=[src])
        assert pending.get(src, OffsetAndMetadata(-1, "")).offset == -1

        await producer.commit_transaction()

        committed = await read_partition(kafka_bootstrap, dst, 5, "read_committed")
        assert [r.value for r in committed] == [f"IN-{i}".encode() for i in range(5)]
        assert [r.offset for r in committed] == [0, 1, 2, 3, 4]
        # 5 records + the commit marker.
        assert await end_offset(kafka_bootstrap, dst, "read_committed") == 6

        offsets = await admin.list_consumer_group_offsets(group)
        assert offsets == {src: OffsetAndMetadata(next_offset, "")}
        assert await source.committed(src) == next_offset
    finally:
        await producer.stop()
        await source.stop()


async def test_aborted_transaction_is_invisible_to_read_committed(
    kafka_bootstrap: str, admin: AIOKafkaAdminClient
) -> None:
    tp = await create_topic(admin, unique("abort"))
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=unique("abort-txn"))
    await producer.start()
    try:
        await producer.begin_transaction()
        for i in range(3):
            await producer.send_and_wait(tp.topic, f"aborted-{i}".encode(), partition=0)
        await producer.abort_transaction()

        # A later committed transaction: once a reader has it, it has read past the aborted records.
        async with producer.transaction():
            for i in range(2):
                await producer.send_and_wait(tp.topic, f"committed-{i}".encode(), partition=0)
    finally:
        await producer.stop()

    committed = await read_partition(kafka_bootstrap, tp, 2, "read_committed")
    assert [(r.offset, r.value) for r in committed] == [(4, b"committed-0"), (5, b"committed-1")]

    # The aborted records were really written (offsets 0-2, abort marker at 3): read_uncommitted sees them.
    uncommitted = await read_partition(kafka_bootstrap, tp, 5, "read_uncommitted")
    assert [(r.offset, r.value) for r in uncommitted] == [
        (0, b"aborted-0"),
        (1, b"aborted-1"),
        (2, b"aborted-2"),
        (4, b"committed-0"),
        (5, b"committed-1"),
    ]


async def test_committed_offsets_survive_consumer_restart(kafka_bootstrap: str, admin: AIOKafkaAdminClient) -> None:
    tp = await create_topic(admin, unique("resume"))
    group = unique("resume-group")

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(tp.topic, f"m-{i}".encode(), partition=0)
    finally:
        await producer.stop()

    def group_consumer() -> AIOKafkaConsumer:
        # auto_offset_reset=earliest: were the commit lost, the next consumer would restart at 0.
        return AIOKafkaConsumer(
            tp.topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )

    first = group_consumer()
    await first.start()
    try:
        seen = await read_records(first, 10)
        assert [r.offset for r in seen] == list(range(10))
        # Only the first 4 were "processed": commit that, not the fetch position.
        await first.commit({tp: 4})
        assert await first.committed(tp) == 4
    finally:
        await first.stop()

    assert await admin.list_consumer_group_offsets(group) == {tp: OffsetAndMetadata(4, "")}

    second = group_consumer()
    await second.start()
    try:
        resumed = await read_records(second, 6)
        assert [(r.offset, r.value) for r in resumed] == [(i, f"m-{i}".encode()) for i in range(4, 10)]
    finally:
        await second.stop()


async def test_data_and_offsets_survive_broker_restart_and_crash() -> None:
    """KafkaBroker.restart() and kill() really replace the broker process, and its data persists.

    Uses a private broker (not the session's), so it never disturbs other tests' broker.
    """
    broker = KafkaBroker()

    def broker_pid() -> str:
        return (broker.data_dir / "kafka.pid").read_text().strip()

    try:
        await asyncio.to_thread(broker.start)
        bootstrap = broker.bootstrap
        topic = unique("restart")
        tp = TopicPartition(topic, 0)
        group = unique("restart-group")
        txn_id = unique("restart-txn")

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await create_topic(admin, topic)
        finally:
            await admin.close()

        async def commit_in_transaction(values: list[bytes], offsets: dict[TopicPartition, int]) -> None:
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=txn_id)
            await producer.start()
            try:
                async with producer.transaction():
                    for value in values:
                        await producer.send_and_wait(topic, value, partition=0)
                    if offsets:
                        await producer.send_offsets_to_transaction(offsets, group)
            finally:
                await producer.stop()

        await commit_in_transaction([b"r-0", b"r-1", b"r-2"], {tp: 1})

        # Graceful restart.
        pid_before = broker_pid()
        await asyncio.to_thread(broker.restart)
        assert broker_pid() != pid_before
        committed = await read_partition(bootstrap, tp, 3, "read_committed")
        assert [r.value for r in committed] == [b"r-0", b"r-1", b"r-2"]
        # The same transactional id works again (transaction state was recovered).
        await commit_in_transaction([b"r-3"], {})

        # Crash (SIGKILL, no clean shutdown) and start again on the same data. Kill only once the
        # commit markers are written (LSO caught up with the high watermark): a single-node KRaft
        # broker killed between a commit's ack and its markers comes back with a hanging transaction
        # (see KafkaBroker.kill), which is not what this test is about.
        await wait_for_stable(bootstrap, tp)
        pid_before = broker_pid()
        await asyncio.to_thread(broker.kill)
        await asyncio.to_thread(broker.start)
        assert broker_pid() != pid_before

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            resumed = await read_records(consumer, 3)
            assert [r.value for r in resumed] == [b"r-1", b"r-2", b"r-3"]
            # 4 records + 2 commit markers, all stable.
            assert await end_offset(bootstrap, tp, "read_committed") == 6
        finally:
            await consumer.stop()
    finally:
        await asyncio.to_thread(broker.stop)
    assert not broker.data_dir.exists()
