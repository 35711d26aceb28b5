"""Reading `stt.sessions`: the latest checkpoint of every session of the given partitions.

`stt.sessions` is compacted and partitioned like `stt.audio`, so a worker that is assigned input
partition *p* reads partition *p* of `stt.sessions` from the beginning to its end (``read_committed``:
only checkpoints whose transaction committed) before it consumes *p*. A tombstone removes a session.
A record that is not a valid checkpoint raises :class:`~pipeline.errors.ContractError`: skipping it
would restart its session from scratch and publish its turns twice.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.contract import Checkpoint
from pipeline.errors import ContractError
from pipeline.kafka.clients import kafka_options
from pipeline.settings import Settings


async def load_checkpoints(
    settings: Settings, topic: str, partitions: list[int], timeout_s: float = 60.0
) -> dict[int, dict[str, Checkpoint]]:
    """``{partition: {session_id: checkpoint}}`` as of the end of each partition."""
    result: dict[int, dict[str, Checkpoint]] = {p: {} for p in partitions}
    if not partitions:
        return result
    consumer = AIOKafkaConsumer(
        **kafka_options(settings, "checkpoints"),
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        async with asyncio.timeout(timeout_s):
            remaining = {tp for tp in tps if ends[tp] > 0}
            while remaining:
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
                if not remaining:
                    break
                batch = await consumer.getmany(*remaining, timeout_ms=200)
                for tp, records in batch.items():
                    sessions = result[tp.partition]
                    for record in records:
                        if record.key is None:
                            continue
                        key = record.key.decode("utf-8", "replace")
                        if record.value is None:
                            sessions.pop(key, None)
                        else:
                            try:
                                sessions[key] = Checkpoint.from_json(record.value)
                            except ContractError as exc:
                                raise ContractError(f"{topic} p{tp.partition}@{record.offset}: {exc}") from None
    finally:
        await consumer.stop()
    return result
