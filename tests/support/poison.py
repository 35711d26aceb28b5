"""Produce genuine Kafka records that aiokafka's consumer cannot decode (header names not UTF-8).

aiokafka's producer only takes header names as ``str``, so these helpers encode a record batch
(magic v2, uncompressed, non-transactional) byte by byte and send it in a raw ``ProduceRequest``
through an ``AIOKafkaClient``. The broker validates and stores it like any other batch (Kafka does not
check that header names are UTF-8), so every consumer fetches exactly these bytes from the log.

``produce_bad_header_name`` writes one such record; ``produce_raw_batch`` writes any mix of good and
bad records as ONE batch, which is what a buggy producer that batches does (the hard case: aiokafka
decodes a batch record by record, so seeking past the bad record alone does not get past it).
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, LeaderNotAvailableError, for_code
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition

_RETRY_FOR_S = 30.0

BAD_HEADER_NAME = b"\xff\xfebad"
"""A header name that is not UTF-8 (0xFF never occurs in UTF-8)."""


@dataclass(frozen=True)
class RawRecord:
    """One record exactly as it goes on the wire: header names are raw bytes."""

    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[bytes, bytes | None]] = field(default_factory=tuple)


def _varint(value: int) -> bytes:
    """Kafka's zigzag varint (varlong) encoding."""
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte = zigzag & 0x7F
        zigzag >>= 7
        if zigzag:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bytes_field(data: bytes | None) -> bytes:
    return _varint(-1) if data is None else _varint(len(data)) + data


def encode_record(offset_delta: int, record: RawRecord, timestamp_delta: int = 0) -> bytes:
    body = bytearray()
    body += b"\x00"  # attributes
    body += _varint(timestamp_delta)
    body += _varint(offset_delta)
    body += _bytes_field(record.key)
    body += _bytes_field(record.value)
    body += _varint(len(record.headers))
    for name, value in record.headers:
        body += _varint(len(name)) + name
        body += _bytes_field(value)
    return _varint(len(body)) + bytes(body)


def encode_batch(records: Sequence[RawRecord], timestamp_ms: int | None = None) -> bytes:
    """A magic v2 record batch (base offset 0: the broker assigns the real offsets)."""
    if not records:
        raise ValueError("a record batch needs at least one record")
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    body = b"".join(encode_record(i, r) for i, r in enumerate(records))
    # attributes, lastOffsetDelta, firstTimestamp, maxTimestamp, producerId, producerEpoch,
    # baseSequence, record count: the part the CRC covers (with the records).
    after_crc = struct.pack(">hiqqqhii", 0, len(records) - 1, ts, ts, -1, -1, -1, len(records)) + body
    crc = calc_crc32c(after_crc)
    after_length = struct.pack(">ibI", -1, 2, crc) + after_crc  # leader epoch, magic, crc
    return struct.pack(">qi", 0, len(after_length)) + after_length


async def produce_raw_batch(
    bootstrap: str, topic: str, partition: int, records: Sequence[RawRecord]
) -> int:
    """Append ``records`` as one batch to ``topic``/``partition``; returns the first record's offset."""
    tp = TopicPartition(topic, partition)
    batch = encode_batch(records)
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        client.add_topic(topic)
        deadline = time.monotonic() + _RETRY_FOR_S
        while True:
            try:
                return await _send_once(client, tp, batch)
            except KafkaError as exc:
                # A topic created a moment ago may not have a leader everywhere yet.
                if not exc.retriable or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.2)
    finally:
        await client.close()


async def _send_once(client: AIOKafkaClient, tp: TopicPartition, batch: bytes) -> int:
    await client.force_metadata_update()
    leader = client.cluster.leader_for_partition(tp)
    if leader is None or leader < 0:
        raise LeaderNotAvailableError(f"no leader for {tp}")
    request = ProduceRequest(
        required_acks=-1, timeout=30_000, topics=[(tp.topic, [(tp.partition, batch)])], transactional_id=None
    )
    response = await client.send(leader, request)
    for resp_topic, partitions in response.topics:
        for resp_partition, error_code, offset, *_ in partitions:
            if (resp_topic, resp_partition) == (tp.topic, tp.partition):
                if error_code != 0:
                    raise for_code(error_code)(f"produce to {tp} failed")
                return int(offset)
    raise KafkaError(f"no produce result for {tp}")


async def produce_bad_header_name(
    bootstrap: str,
    topic: str,
    partition: int,
    key: bytes | None,
    value: bytes | None = b"",
    *,
    headers: Sequence[tuple[bytes, bytes | None]] = (),
    bad_name: bytes = BAD_HEADER_NAME,
) -> int:
    """Append one record whose header ``bad_name`` (not UTF-8) follows ``headers``; returns its offset."""
    record = RawRecord(key, value, (*headers, (bad_name, b"x")))
    return await produce_raw_batch(bootstrap, topic, partition, [record])
