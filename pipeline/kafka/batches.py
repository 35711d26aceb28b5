"""A lenient reader of Kafka record batches (magic v2), for data aiokafka refuses to decode.

aiokafka decodes a batch record by record and gives up on the whole fetch at the first record it
cannot decode (a header name that is not UTF-8, a malformed record). This module reads the same bytes
without giving up: it splits fetched bytes into batches, and decodes one batch into its good records
and its bad ones (each with its offset, the reason, and its raw bytes), so that a consumer can hand on
the good ones and dead-letter the bad ones. Pure functions over bytes; no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from aiokafka.codec import gzip_decode, lz4_decode, snappy_decode, zstd_decode
from aiokafka.record.util import calc_crc32c

_BATCH_PREFIX = struct.Struct(">qi")  # base offset, batch length (bytes after this prefix)
_BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")
_MAGIC_OFFSET = 16  # base offset (8) + length (4) + partition leader epoch (4)
_CRC_COVERED_FROM = 21  # the CRC covers everything after itself

_COMPRESSION_MASK = 0x07
_TIMESTAMP_TYPE_MASK = 0x08
_LOG_APPEND_TIME = 1


class BatchFormatError(ValueError):
    """The batch's framing or header cannot be read at all (so no record in it can be)."""


@dataclass(frozen=True)
class BatchSpan:
    """Where one complete batch lies in fetched bytes, and the offsets it covers."""

    start: int
    end: int
    base_offset: int
    last_offset: int
    magic: int

    @property
    def next_offset(self) -> int:
        return self.last_offset + 1


@dataclass(frozen=True)
class GoodRecord:
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True)
class BadRecord:
    """A record that cannot be decoded: its offset, why, and what could be read of it."""

    offset: int
    error: str
    raw: bytes | None
    key: bytes | None = None
    value: bytes | None = None
    headers: tuple[tuple[bytes, bytes | None], ...] = ()
    timestamp: int | None = None


def split_batches(data: bytes) -> list[BatchSpan]:
    """The complete batches in ``data``, in order (a trailing partial batch is left out)."""
    spans: list[BatchSpan] = []
    pos = 0
    while pos + _BATCH_PREFIX.size + 5 <= len(data):
        base_offset, length = _BATCH_PREFIX.unpack_from(data, pos)
        end = pos + _BATCH_PREFIX.size + length
        if length <= 0 or end > len(data):
            break
        magic = data[pos + _MAGIC_OFFSET]
        # A legacy (v0/v1) entry's offset is its last (inner) record's offset.
        last_offset = base_offset + (struct.unpack_from(">i", data, pos + 23)[0] if magic >= 2 else 0)
        spans.append(BatchSpan(pos, end, base_offset, last_offset, magic))
        pos = end
    return spans


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise IndexError("varint runs past the end of the record")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _nullable(buf: bytes, pos: int) -> tuple[bytes | None, int]:
    length, pos = _varint(buf, pos)
    if length < 0:
        return None, pos
    if pos + length > len(buf):
        raise IndexError("field runs past the end of the record")
    return bytes(buf[pos : pos + length]), pos + length


def _decompress(codec: int, data: bytes) -> bytes:
    if codec == 0:
        return data
    if codec == 1:
        return bytes(gzip_decode(data))
    if codec == 2:
        return bytes(snappy_decode(data))
    if codec == 3:
        return bytes(lz4_decode(data))
    if codec == 4:
        return bytes(zstd_decode(data))
    raise BatchFormatError(f"unknown compression codec {codec}")


@dataclass(frozen=True)
class DecodedBatch:
    records: list[GoodRecord | BadRecord]
    trailing_bytes: int  # bytes after the last record: aiokafka refuses such a batch

    @property
    def clean(self) -> bool:
        """aiokafka would decode this batch without an error."""
        return self.trailing_bytes == 0 and not any(isinstance(r, BadRecord) for r in self.records)


def decode_batch(batch: bytes) -> DecodedBatch:
    """Every record of one v2 batch in offset order, each either decoded or marked bad.

    Raises :class:`BatchFormatError` when nothing in the batch can be trusted (bad CRC, not magic
    v2, unknown codec, undecompressible): the caller then skips the whole batch.
    """
    if len(batch) < _BATCH_HEADER.size:
        raise BatchFormatError("batch shorter than its header")
    (
        base_offset,
        _length,
        _epoch,
        magic,
        crc,
        attributes,
        _last_delta,
        first_ts,
        max_ts,
        _producer_id,
        _producer_epoch,
        _base_seq,
        count,
    ) = _BATCH_HEADER.unpack_from(batch, 0)
    if magic != 2:
        raise BatchFormatError(f"record batch magic {magic} is not supported")
    if calc_crc32c(batch[_CRC_COVERED_FROM:]) != crc:
        raise BatchFormatError("record batch fails its CRC check")
    try:
        body = _decompress(attributes & _COMPRESSION_MASK, batch[_BATCH_HEADER.size :])
    except BatchFormatError:
        raise
    except Exception as exc:  # any codec's failure means the same: the batch is unreadable
        raise BatchFormatError(f"cannot decompress record batch: {exc!r}") from exc
    log_append = (attributes & _TIMESTAMP_TYPE_MASK) >> 3 == _LOG_APPEND_TIME
    timestamp_type = _LOG_APPEND_TIME if log_append else 0

    out: list[GoodRecord | BadRecord] = []
    pos = 0
    for _ in range(count):
        expected_offset = out[-1].offset + 1 if out else base_offset
        try:
            length, start = _varint(body, pos)
        except (IndexError, ValueError) as exc:
            raise _unreadable_from(expected_offset, exc) from exc
        end = start + length
        if length < 0 or end > len(body):
            raise _unreadable_from(expected_offset, f"record length {length} out of bounds")
        raw = bytes(body[pos:end])
        out.append(_decode_record(body[start:end], raw, base_offset, first_ts, max_ts,
                                  timestamp_type, log_append, expected_offset))
        pos = end
    return DecodedBatch(out, len(body) - pos)


def _unreadable_from(offset: int, why: object) -> BatchFormatError:
    return BatchFormatError(f"records from offset {offset} on cannot be framed: {why}")


def _decode_record(
    rec: bytes,
    raw: bytes,
    base_offset: int,
    first_ts: int,
    max_ts: int,
    timestamp_type: int,
    log_append: bool,
    expected_offset: int,
) -> GoodRecord | BadRecord:
    offset = expected_offset
    timestamp: int | None = None
    key: bytes | None = None
    value: bytes | None = None
    raw_headers: list[tuple[bytes, bytes | None]] = []
    try:
        pos = 1  # attributes (one byte, unused)
        ts_delta, pos = _varint(rec, pos)
        timestamp = max_ts if log_append else first_ts + ts_delta
        offset_delta, pos = _varint(rec, pos)
        offset = base_offset + offset_delta
        key, pos = _nullable(rec, pos)
        value, pos = _nullable(rec, pos)
        header_count, pos = _varint(rec, pos)
        if header_count < 0:
            raise ValueError(f"negative header count {header_count}")
        for _ in range(header_count):
            name_len, pos = _varint(rec, pos)
            if name_len < 0:
                raise ValueError(f"negative header name size {name_len}")
            if pos + name_len > len(rec):
                raise IndexError("header name runs past the end of the record")
            name = bytes(rec[pos : pos + name_len])
            pos += name_len
            header_value, pos = _nullable(rec, pos)
            raw_headers.append((name, header_value))
        if pos != len(rec):
            raise ValueError(f"{len(rec) - pos} bytes left over after the record's headers")
    except (IndexError, ValueError) as exc:
        return BadRecord(offset, f"malformed record: {exc}", raw, key, value, tuple(raw_headers), timestamp)
    headers: list[tuple[str, bytes | None]] = []
    for name, header_value in raw_headers:
        try:
            headers.append((name.decode("utf-8"), header_value))
        except UnicodeDecodeError as exc:
            return BadRecord(
                offset, f"header name {name!r} is not UTF-8: {exc.reason}", raw, key, value,
                tuple(raw_headers), timestamp,
            )
    assert timestamp is not None
    return GoodRecord(offset, timestamp, timestamp_type, key, value, tuple(headers))
