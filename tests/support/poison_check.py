"""Run in a subprocess by tests/integration/test_poison_fetch.py, so that the environment variable
``AIOKAFKA_NO_EXTENSIONS`` (read once, when aiokafka is imported) can select pure Python or the C
extension per test.

``python -m tests.support.poison_check BOOTSTRAP LAYOUT`` creates a topic, writes LAYOUT to it and reads
it back twice: with plain ``getmany`` and with :func:`pipeline.kafka.fetch.fetch`. It prints one JSON
object with what each read saw. LAYOUT is batches separated by ``|``, each a string of ``g`` (good
record) and ``P`` (a header name that is not UTF-8); a second partition, if ``+N`` ends LAYOUT, gets N
good records.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.util import NO_EXTENSIONS

from pipeline.kafka.fetch import fetch
from tests.support.poison import BAD_HEADER_NAME, RawRecord, produce_raw_batch

MAX_RECORDS = 4


def _consumer(bootstrap: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )


async def _write(bootstrap: str, layout: str) -> tuple[list[TopicPartition], dict[str, Any]]:
    batches, _, extra = layout.partition("+")
    topic = f"it-poison-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2 if extra else 1, replication_factor=1)])
    finally:
        await admin.close()
    good: list[list[int]] = [[], []]
    poison: list[int] = []
    n = 0
    for batch in batches.split("|"):
        records = []
        for kind in batch:
            headers = [(b"type", b"audio"), (BAD_HEADER_NAME, b"x")] if kind == "P" else [(b"type", b"audio")]
            records.append(RawRecord(b"session", f"v{n}".encode(), headers))
            n += 1
        base = await produce_raw_batch(bootstrap, topic, 0, records)
        for i, kind in enumerate(batch):
            (poison if kind == "P" else good[0]).append(base + i)
    for i in range(int(extra or 0)):
        base = await produce_raw_batch(bootstrap, topic, 1, [RawRecord(b"other", f"o{i}".encode())])
        good[1].append(base)
    tps = [TopicPartition(topic, p) for p in range(2 if extra else 1)]
    return tps, {"good": good[: len(tps)], "poison": poison}


async def _plain(bootstrap: str, tps: list[TopicPartition]) -> dict[str, Any]:
    consumer = _consumer(bootstrap)
    await consumer.start()
    errors: list[str] = []
    seen: list[list[int]] = [[] for _ in tps]
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        # Until it has raised twice (a retry raises again), or it plainly never raises.
        for _ in range(30):
            if len(errors) >= 2:
                break
            try:
                got = await consumer.getmany(timeout_ms=2000, max_records=MAX_RECORDS)
            except Exception as exc:  # what the old worker loop saw
                errors.append(type(exc).__name__)
                continue
            for tp, records in got.items():
                seen[tp.partition].extend(r.offset for r in records)
    finally:
        await consumer.stop()
    return {"errors": errors, "seen": seen}


async def _with_fetch(bootstrap: str, tps: list[TopicPartition], total: int) -> dict[str, Any]:
    consumer = _consumer(bootstrap)
    await consumer.start()
    seen: list[list[int]] = [[] for _ in tps]
    values: list[str] = []
    corrupt: list[dict[str, Any]] = []
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        idle = 0
        while loop.time() < deadline and idle < 3:
            outcome = await fetch(consumer, timeout_ms=500, max_records=MAX_RECORDS)
            for tp, records in outcome.records.items():
                seen[tp.partition].extend(r.offset for r in records)
                if tp.partition == 0:
                    values.extend(r.value.decode() for r in records)
            for c in outcome.corrupt:
                corrupt.append(
                    {"partition": c.tp.partition, "offset": c.offset, "error": c.error,
                     "raw": c.raw is not None, "value": c.value.decode() if c.value else None}
                )
            done = sum(map(len, seen)) + len(corrupt) >= total
            idle = idle + 1 if done or not (outcome.records or outcome.corrupt) else 0
    finally:
        await consumer.stop()
    return {"seen": seen, "values": values, "corrupt": corrupt}


async def main(bootstrap: str, layout: str) -> None:
    tps, written = await _write(bootstrap, layout)
    total = sum(map(len, written["good"])) + len(written["poison"])
    result = {
        "no_extensions": NO_EXTENSIONS,
        "written": written,
        "plain": await _plain(bootstrap, tps),
        "fetch": await _with_fetch(bootstrap, tps, total),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
