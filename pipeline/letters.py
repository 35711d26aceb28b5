"""Dead-letter records the worker writes: rejected input, undecodable input, quarantined output.

Every dead letter fits the size budget (``max_request_size``): payloads that would not fit are cut
and carry their original size and SHA-256 instead (see :func:`pipeline.records.dead_letter`).
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING

import orjson
from aiokafka import ConsumerRecord, TopicPartition

from pipeline.commit import OutRecord
from pipeline.kafka.fetch import CorruptRecord
from pipeline.records import Rejected, dead_letter
from pipeline.redact import scrub

if TYPE_CHECKING:
    from pipeline.settings import Settings

# A dead letter leaves this much of its record budget for the key and the record batch around it.
LETTER_ENVELOPE_BYTES = 4096


def _key(session_id: str | None, settings: Settings) -> str | None:
    if session_id is None or len(session_id.encode()) > settings.max_key_bytes:
        return None
    return session_id


def dead_letter_record(
    settings: Settings,
    max_bytes: int,
    tp: TopicPartition,
    record: ConsumerRecord[bytes, bytes],
    reason: str,
    detail: str,
    session_id: str | None,
) -> OutRecord:
    """The dead letter of an input record the worker rejected."""
    if session_id is None and record.key:
        session_id = record.key.decode("utf-8", "replace")
    key = _key(session_id, settings)
    letter = dead_letter(
        Rejected(reason, scrub(detail, [], 512)),
        session_id=key,
        topic=tp.topic,
        partition=tp.partition,
        offset=record.offset,
        timestamp=record.timestamp,
        headers=record.headers,
        value=record.value,
        at=int(time.time() * 1000),
        max_bytes=max_bytes,
    )
    return OutRecord(settings.dead_letter_topic, key, orjson.dumps(letter), created_at=time.monotonic())


def corrupt_letter(settings: Settings, max_bytes: int, corrupt: CorruptRecord) -> OutRecord:
    """The dead letter of a record aiokafka could not decode: its position, the error, its bytes if known."""
    letter = dead_letter(
        Rejected("unparseable", f"the record could not be decoded: {scrub(corrupt.error, [], 400)}"),
        session_id=None,
        topic=corrupt.tp.topic,
        partition=corrupt.tp.partition,
        offset=corrupt.offset,
        timestamp=None,
        headers=[],
        value=corrupt.raw,
        at=int(time.time() * 1000),
        max_bytes=max_bytes,
    )
    return OutRecord(settings.dead_letter_topic, None, orjson.dumps(letter), created_at=time.monotonic())


def quarantine_letter(
    settings: Settings, max_bytes: int, tp: TopicPartition, offset: int, record: OutRecord, error: str
) -> OutRecord:
    """A small stand-in for an output record Kafka refused: where it was going, its size and hash."""
    value = record.value or b""
    letter = dead_letter(
        Rejected(
            "oversized",
            f"output to {record.topic} refused by Kafka ({scrub(error, [], 200)}); "
            f"{len(value)} bytes, sha256 {hashlib.sha256(value).hexdigest()}",
        ),
        session_id=_key(record.key, settings),
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=None,
        headers=[],
        value=b"",
        at=int(time.time() * 1000),
        max_bytes=max_bytes,
    )
    return OutRecord(settings.dead_letter_topic, _key(record.key, settings), orjson.dumps(letter))
