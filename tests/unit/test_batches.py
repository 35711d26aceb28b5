"""The lenient batch reader: good records decoded, bad ones marked with offset and raw bytes."""

from __future__ import annotations

import pytest

from pipeline.kafka.batches import BadRecord, BatchFormatError, GoodRecord, decode_batch, split_batches
from tests.support.poison import BAD_HEADER_NAME, RawRecord, encode_batch


def test_bad_header_name_is_marked_and_the_rest_decoded() -> None:
    batch = encode_batch(
        [
            RawRecord(b"k", b"a", [(b"type", b"audio")]),
            RawRecord(b"k", b"b", [(BAD_HEADER_NAME, b"x")]),
            RawRecord(None, None, [(b"seq", None)]),
        ],
        timestamp_ms=1000,
    )
    decoded = decode_batch(batch)
    assert decoded.trailing_bytes == 0 and not decoded.clean
    first, bad, last = decoded.records
    assert first == GoodRecord(0, 1000, 0, b"k", b"a", (("type", b"audio"),))
    assert isinstance(bad, BadRecord)
    assert (bad.offset, bad.key, bad.value, bad.headers) == (1, b"k", b"b", ((BAD_HEADER_NAME, b"x"),))
    assert "not UTF-8" in bad.error and bad.raw and BAD_HEADER_NAME in bad.raw
    assert last == GoodRecord(2, 1000, 0, None, None, (("seq", None),))


def test_split_keeps_complete_batches_only() -> None:
    one = encode_batch([RawRecord(b"k", b"a")])
    two = encode_batch([RawRecord(b"k", b"b"), RawRecord(b"k", b"c")])
    spans = split_batches(one + two + two[:20])
    assert [(s.start, s.end, s.last_offset) for s in spans] == [(0, len(one), 0), (len(one), len(one + two), 1)]


def test_a_batch_failing_its_crc_is_unreadable() -> None:
    batch = bytearray(encode_batch([RawRecord(b"k", b"a")]))
    batch[-1] ^= 0xFF
    with pytest.raises(BatchFormatError, match="CRC"):
        decode_batch(bytes(batch))
