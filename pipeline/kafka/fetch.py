"""``fetch()``: ``consumer.getmany`` that survives records aiokafka cannot decode.

aiokafka 0.14 raises out of ``getmany`` when a fetched record cannot be decoded (a header name that is
not UTF-8: ``UnicodeDecodeError`` with the C extension, ``CorruptRecordException`` without it; a bad
CRC or a malformed record: ``CorruptRecordException``). It then leaves the partition's position where
that ``getmany`` started, so every retry raises again, and it drops the records it had already taken
in that call, including those of OTHER partitions whose positions it had already advanced. Seeking
past the bad offset alone does not help either: aiokafka decodes a whole batch from its first record,
so a bad record keeps failing every fetch that lands in its batch.

``fetch()`` calls ``getmany``; on such an error it

1. seeks every partition whose position the failed call advanced back to where it was (those records
   were never returned, so they are fetched again: none lost, none duplicated);
2. reads the partitions' log from their positions itself (a raw fetch, the one place that uses aiokafka
   internals, :func:`_aiokafka_internals`), finds the first batch aiokafka cannot get past, returns
   the good records up to the end of that batch (decoded by aiokafka itself where it can, by
   :mod:`pipeline.kafka.batches` inside the bad batch) and each bad record as a :class:`CorruptRecord`
   (offset, reason, raw bytes), and seeks past them;
3. if that is impossible (aiokafka's internals changed, or the bad record cannot be found), falls back
   to public API only: fetches partition by partition one record at a time and, where ``getmany``
   raises, reports the partition's position as corrupt and skips that one offset.

Corrupt-record errors (:data:`CORRUPT_RECORD_ERRORS`): ``CorruptRecordException`` and
``UnicodeDecodeError`` from ``getmany``. ``RecordTooLargeError`` (a record bigger than the fetch size,
old brokers only) is reported as a corrupt record at the offset aiokafka already skipped. Everything
else (connection, authorization, offset out of range, a stopped consumer, ...) is re-raised unchanged.

The consumer must not use key/value deserializers that can fail: a failing deserializer raises
straight out of ``getmany`` like any other error.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CorruptRecordException, RecordTooLargeError

from pipeline.kafka.batches import BadRecord, BatchFormatError, BatchSpan, GoodRecord, decode_batch, split_batches

log = logging.getLogger(__name__)

CORRUPT_RECORD_ERRORS: tuple[type[BaseException], ...] = (CorruptRecordException, UnicodeDecodeError)
"""What ``getmany`` raises for a record it cannot decode (C extension and pure Python)."""

Record: TypeAlias = ConsumerRecord[Any, Any]


@dataclass(frozen=True)
class CorruptRecord:
    """A record that was skipped because it cannot be decoded. ``raw`` is its bytes as stored in the
    batch (for a record: the length-prefixed record; for an unreadable batch: the whole batch), or
    None when they could not be had; ``key``/``value``/``headers`` are what could be read of it."""

    tp: TopicPartition
    offset: int
    error: str
    raw: bytes | None
    key: bytes | None = None
    value: bytes | None = None
    headers: tuple[tuple[bytes, bytes | None], ...] = ()
    timestamp: int | None = None


@dataclass
class FetchOutcome:
    records: dict[TopicPartition, list[Record]] = field(default_factory=dict)
    corrupt: list[CorruptRecord] = field(default_factory=list)

    def in_offset_order(self) -> dict[TopicPartition, list[Record | CorruptRecord]]:
        """Per partition, good and corrupt records together, in offset order (how they lie in the log)."""
        merged: dict[TopicPartition, list[Record | CorruptRecord]] = {tp: list(rs) for tp, rs in self.records.items()}
        for corrupt in self.corrupt:
            merged.setdefault(corrupt.tp, []).append(corrupt)
        for items in merged.values():
            items.sort(key=lambda item: item.offset)
        return {tp: items for tp, items in merged.items() if items}


async def fetch(consumer: AIOKafkaConsumer, *, timeout_ms: int, max_records: int) -> FetchOutcome:
    """Like ``consumer.getmany(timeout_ms=..., max_records=...)``, with undecodable records skipped.

    Good records come back in offset order per partition, each exactly once over successive calls;
    ``max_records`` bounds good plus corrupt records. Non-record errors are re-raised unchanged.
    """
    positions, pending = await _known_positions(consumer)
    if pending:
        if not positions:
            # No partition can be fetched before one has a position: wait for one, as getmany would.
            await asyncio.wait(pending, timeout=timeout_ms / 1000, return_when=asyncio.FIRST_COMPLETED)
            _discard(pending)
            return FetchOutcome()
        _discard(pending)
    try:
        # Only partitions whose position we know: those are the ones a failed call can be undone for.
        records = await consumer.getmany(*positions, timeout_ms=timeout_ms, max_records=max_records)
    except RecordTooLargeError as exc:
        return FetchOutcome(corrupt=_too_large(exc))
    except CORRUPT_RECORD_ERRORS as exc:
        return await _recover(consumer, positions, exc, timeout_ms, max_records)
    return FetchOutcome(records=records)


async def _known_positions(
    consumer: AIOKafkaConsumer,
) -> tuple[dict[TopicPartition, int], set[asyncio.Task[int]]]:
    """Positions of the assigned partitions that have one now, without waiting for the others.

    ``consumer.position()`` returns at once for a partition with a valid position and waits
    otherwise; one loop tick tells the two apart. The tasks still waiting are returned."""
    tasks = {tp: asyncio.ensure_future(consumer.position(tp)) for tp in consumer.assignment()}
    if tasks:
        await asyncio.sleep(0)
    known: dict[TopicPartition, int] = {}
    pending: set[asyncio.Task[int]] = set()
    for tp, task in tasks.items():
        if not task.done():
            pending.add(task)
        elif not task.cancelled() and task.exception() is None:
            known[tp] = task.result()
    return known, pending


def _discard(tasks: Iterable[asyncio.Task[int]]) -> None:
    for task in tasks:
        if task.done():
            if not task.cancelled():
                task.exception()  # retrieved: an unassigned partition is not an error here
        else:
            task.cancel()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _too_large(exc: RecordTooLargeError) -> list[CorruptRecord]:
    # aiokafka raises it as RecordTooLargeError(message, tp, fetch_offset, max_bytes), after it has
    # already moved the partition's position one past fetch_offset.
    args = exc.args
    if len(args) >= 3 and isinstance(args[1], TopicPartition) and isinstance(args[2], int):
        text = args[0] % args[1:] if isinstance(args[0], str) else str(exc)
        return [CorruptRecord(args[1], args[2], f"RecordTooLargeError: {text}", None)]
    log.warning("record too large, position already advanced by aiokafka: %s", exc)
    return []


async def _recover(
    consumer: AIOKafkaConsumer,
    before: dict[TopicPartition, int],
    exc: BaseException,
    timeout_ms: int,
    max_records: int,
) -> FetchOutcome:
    after, pending = await _known_positions(consumer)
    _discard(pending)
    for tp, position in before.items():
        if tp in after and after[tp] != position:
            consumer.seek(tp, position)  # the failed call dropped these records without returning them
    try:
        outcome = await _recover_from_log(consumer, before, max_records)
    except asyncio.CancelledError:
        raise
    except Exception as internal_error:
        log.warning("reading the log around a corrupt record failed (%s); probing instead", internal_error)
        outcome = None
    if outcome is not None:
        return outcome
    return await _recover_by_probing(consumer, before, exc, timeout_ms, max_records)


# --- the only code that uses aiokafka internals -------------------------------------------------


@dataclass(frozen=True)
class _Internals:
    raw_fetch: Callable[[dict[TopicPartition, int]], Any]
    decode: Callable[[TopicPartition, bytes, Sequence[Any] | None, int], list[Record]]
    to_record: Callable[[TopicPartition, GoodRecord], Record]


def _aiokafka_internals(consumer: AIOKafkaConsumer) -> _Internals:
    """aiokafka (0.14) has no public API to fetch raw bytes or to decode fetched bytes, so this reads
    the consumer's private client and fetcher settings and uses the fetcher's own decoder. If any of
    this changes, it raises and :func:`fetch` falls back to public-API probing."""
    from aiokafka.consumer.fetcher import PartitionRecords
    from aiokafka.protocol.fetch import FetchRequest
    from aiokafka.record.memory_records import MemoryRecords

    client = consumer._client
    fetcher = consumer._fetcher
    isolation_level: int = fetcher._isolation_level
    key_deserializer = fetcher._key_deserializer
    value_deserializer = fetcher._value_deserializer
    check_crcs = fetcher._check_crcs
    partition_bytes: int = fetcher._max_partition_fetch_bytes

    async def raw_fetch(positions: dict[TopicPartition, int]) -> dict[TopicPartition, tuple[bytes, Any]]:
        by_node: dict[int, dict[str, list[tuple[int, int, int]]]] = collections.defaultdict(
            lambda: collections.defaultdict(list)
        )
        for tp, position in positions.items():
            node = client.cluster.leader_for_partition(tp)
            if node is not None and node >= 0:
                by_node[node][tp.topic].append((tp.partition, position, partition_bytes))
        out: dict[TopicPartition, tuple[bytes, Any]] = {}
        for node, topics in by_node.items():
            request = FetchRequest(0, 0, 50 * partition_bytes, isolation_level, list(topics.items()))
            response = await client.send(node, request)
            for topic, partitions in response.topics:
                for partition, error_code, _highwater, *part_data in partitions:
                    if error_code != 0:
                        continue
                    if response.API_VERSION >= 11:
                        aborted = part_data[2]
                    elif response.API_VERSION >= 4:
                        aborted = part_data[-2]
                    else:
                        aborted = None
                    out[TopicPartition(topic, partition)] = (bytes(part_data[-1] or b""), aborted)
        return out

    def decode(tp: TopicPartition, data: bytes, aborted: Sequence[Any] | None, position: int) -> list[Record]:
        records = PartitionRecords(
            tp, MemoryRecords(data), aborted, position, key_deserializer, value_deserializer,
            check_crcs, isolation_level,
        )
        decoded: list[Record] = list(records)
        return decoded

    def to_record(tp: TopicPartition, record: GoodRecord) -> Record:
        key = key_deserializer(record.key) if key_deserializer else record.key
        value = value_deserializer(record.value) if value_deserializer else record.value
        return ConsumerRecord(
            tp.topic, tp.partition, record.offset, record.timestamp, record.timestamp_type, key, value,
            None, len(record.key) if record.key is not None else -1,
            len(record.value) if record.value is not None else -1, record.headers,
        )

    return _Internals(raw_fetch, decode, to_record)


# --- recovery -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    offset: int
    resume: int  # where to continue after this item
    record: Record | None = None
    corrupt: CorruptRecord | None = None


async def _recover_from_log(
    consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int], max_records: int
) -> FetchOutcome | None:
    """Read the log from ``positions``; for every partition holding a batch aiokafka cannot get past,
    return its records up to the end of that batch and seek past them. None if there is none."""
    internals = _aiokafka_internals(consumer)
    chunks = await internals.raw_fetch(positions)
    outcome = FetchOutcome()
    found = False
    budget = max_records
    for tp in sorted(chunks, key=lambda t: (t.topic, t.partition)):
        if budget <= 0:
            break
        data, aborted = chunks[tp]
        items = _scan(internals, tp, positions[tp], data, aborted)
        if items is None:
            continue
        found = True
        items = items[:budget]
        budget -= len(items)
        good = [item.record for item in items if item.record is not None]
        if good:
            outcome.records[tp] = good
        outcome.corrupt.extend(item.corrupt for item in items if item.corrupt is not None)
        consumer.seek(tp, items[-1].resume)
        for item in items:
            if item.corrupt is not None:
                log.warning("skipped corrupt record %s offset %d: %s", tp, item.offset, item.corrupt.error)
    return outcome if found else None


def _scan(
    internals: _Internals, tp: TopicPartition, position: int, data: bytes, aborted: Sequence[Any] | None
) -> list[_Item] | None:
    """The partition's items from ``position`` to the end of the first batch aiokafka cannot decode,
    or None if aiokafka decodes all of ``data``."""
    for span in split_batches(data):
        if span.next_offset <= position or _looks_clean(data, span):
            continue
        try:
            internals.decode(tp, data[: span.end], aborted, position)
        except CORRUPT_RECORD_ERRORS:
            pass
        else:
            continue  # aiokafka does not read this batch (aborted transaction) or accepts it
        before = internals.decode(tp, data[: span.start], aborted, position)
        items = [_Item(r.offset, r.offset + 1, record=r) for r in before]
        items.extend(_bad_batch_items(internals, tp, position, data[span.start : span.end], span))
        return items
    return None


def _looks_clean(data: bytes, span: BatchSpan) -> bool:
    if span.magic != 2:
        return False
    try:
        return decode_batch(data[span.start : span.end]).clean
    except BatchFormatError:
        return False


def _bad_batch_items(
    internals: _Internals, tp: TopicPartition, position: int, batch: bytes, span: BatchSpan
) -> list[_Item]:
    try:
        decoded = decode_batch(batch)
    except BatchFormatError as exc:
        first = max(span.base_offset, position)
        error = f"record batch {span.base_offset}..{span.last_offset} unreadable: {exc}"
        return [_Item(first, span.next_offset, corrupt=CorruptRecord(tp, first, error, batch))]
    items: list[_Item] = []
    for rec in decoded.records:
        if rec.offset < position:
            continue
        if isinstance(rec, BadRecord):
            corrupt = CorruptRecord(tp, rec.offset, rec.error, rec.raw, rec.key, rec.value, rec.headers, rec.timestamp)
            items.append(_Item(rec.offset, rec.offset + 1, corrupt=corrupt))
        else:
            items.append(_Item(rec.offset, rec.offset + 1, record=internals.to_record(tp, rec)))
    if items:
        items[-1] = _Item(items[-1].offset, span.next_offset, items[-1].record, items[-1].corrupt)
    else:
        # Only bytes after the last record are wrong: nothing from ``position`` on is lost by skipping.
        items.append(_Item(position, span.next_offset, corrupt=CorruptRecord(
            tp, position, f"record batch {span.base_offset}..{span.last_offset}: "
            f"{decoded.trailing_bytes} bytes after its last record", batch)))
    return items


async def _recover_by_probing(
    consumer: AIOKafkaConsumer,
    positions: dict[TopicPartition, int],
    exc: BaseException,
    timeout_ms: int,
    max_records: int,
) -> FetchOutcome:
    """Public API only: fetch each partition one record at a time; where ``getmany`` raises, skip the
    one offset at the partition's position. Inside a batch this may report good records as corrupt
    (one per call) until past the bad one: a last resort that never stops the consumer."""
    outcome = FetchOutcome()
    budget = max_records
    for tp in sorted(positions, key=lambda t: (t.topic, t.partition)):
        while budget > 0:
            try:
                got = await consumer.getmany(tp, timeout_ms=timeout_ms, max_records=1)
            except CORRUPT_RECORD_ERRORS as error:
                offset = await consumer.position(tp)
                outcome.corrupt.append(CorruptRecord(tp, offset, _describe(error), None))
                consumer.seek(tp, offset + 1)
                log.warning("skipped corrupt record %s offset %d: %s", tp, offset, _describe(error))
                return outcome
            if not got:
                break
            outcome.records.setdefault(tp, []).extend(got.get(tp, []))
            budget -= 1
            timeout_ms = 0
    if not outcome.records:
        log.warning("could not locate the corrupt record behind %s", _describe(exc))
    return outcome
