"""The input contract: parsing `stt.audio` records and building dead letters."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.records import (
    DEAD_LETTER_MIN_BYTES,
    ERROR_CHARS,
    MAX_SEQ,
    AudioFormat,
    InputLimits,
    Rejected,
    dead_letter,
    parse,
    unparseable,
)
from pipeline.schemas import validate


def headers(**values: str | bytes) -> list[tuple[str, bytes | None]]:
    return [(k, v if isinstance(v, bytes) else v.encode()) for k, v in values.items()]


AUDIO = {"type": "audio", "seq": "0", "encoding": "pcm_s16le", "sample_rate": "16000"}


def test_audio_chunk_with_defaults() -> None:
    message = parse(b"call-1", headers(**AUDIO), b"\0\0\1\0")
    assert (message.session_id, message.type, message.seq, message.audio) == ("call-1", "audio", 0, b"\0\0\1\0")
    assert message.format == AudioFormat("pcm_s16le", 16000, 1, "auto", "ink-2", None)


def test_audio_chunk_with_every_optional_header() -> None:
    h = {**AUDIO, "endpoint": "manual", "model": "ink-whisper", "language": "de", "channels": "2"}
    message = parse("sessión".encode(), headers(**h), b"\0" * 8)
    assert message.session_id == "sessión"
    assert message.format == AudioFormat("pcm_s16le", 16000, 2, "manual", "ink-whisper", "de")


@pytest.mark.parametrize("kind", ["finalize", "end"])
def test_control_records(kind: str) -> None:
    message = parse(b"s", headers(type=kind, seq="7"), None)
    assert (message.type, message.seq, message.format) == (kind, 7, None)


@pytest.mark.parametrize("hdrs", [AUDIO, {"type": "end", "seq": "3"}])
def test_the_record_timestamp_is_carried_when_given(hdrs: dict[str, str]) -> None:
    value = b"\0\0" if hdrs["type"] == "audio" else None
    assert parse(b"s", headers(**hdrs), value, timestamp=1767225603200).timestamp == 1767225603200
    assert parse(b"s", headers(**hdrs), value).timestamp is None


@pytest.mark.parametrize(
    ("key", "hdrs", "value", "reason"),
    [
        (None, AUDIO, b"\0\0", "missing_session_id"),
        (b"", AUDIO, b"\0\0", "missing_session_id"),
        (b"\xff", AUDIO, b"\0\0", "missing_session_id"),
        (b"s", {k: v for k, v in AUDIO.items() if k != "type"}, b"\0\0", "bad_header"),
        (b"s", {**AUDIO, "type": "start"}, b"\0\0", "bad_header"),
        (b"s", {**AUDIO, "type": b"\xff"}, b"\0\0", "bad_header"),
        (b"s", {k: v for k, v in AUDIO.items() if k != "seq"}, b"\0\0", "bad_header"),
        (b"s", {**AUDIO, "seq": "-1"}, b"\0\0", "bad_header"),
        (b"s", {**AUDIO, "seq": "one"}, b"\0\0", "bad_header"),
        (b"s", {**AUDIO, "seq": "\u0661"}, b"\0\0", "bad_header"),  # a non-ASCII digit
        (b"s", {k: v for k, v in AUDIO.items() if k != "encoding"}, b"\0\0", "bad_header"),
        (b"s", {**AUDIO, "encoding": "pcm_u8"}, b"\0\0", "unknown_encoding"),
        (b"s", {**AUDIO, "encoding": "PCM_S16LE"}, b"\0\0", "unknown_encoding"),
        (b"s", {k: v for k, v in AUDIO.items() if k != "sample_rate"}, b"\0\0", "bad_header"),
        (b"s", {**AUDIO, "sample_rate": "7999"}, b"\0\0", "bad_header"),
        (b"s", {**AUDIO, "sample_rate": "48001"}, b"\0\0", "bad_header"),
        (b"s", {**AUDIO, "channels": "0"}, b"\0\0", "bad_header"),
        (b"s", {**AUDIO, "channels": "9"}, b"\0\0", "bad_header"),
        (b"s", {**AUDIO, "channels": "02"}, b"\0\0", "bad_header"),
        (b"s", {**AUDIO, "sample_rate": "016000"}, b"\0\0", "bad_header"),
        (b"s", {**AUDIO, "seq": "00"}, b"\0\0", "bad_header"),
        (b"s", {**AUDIO, "seq": str(MAX_SEQ + 1)}, b"\0\0", "bad_header"),
        (b"s", {**AUDIO, "seq": "+1"}, b"\0\0", "bad_header"),
        (b"s", {**AUDIO, "seq": " 1"}, b"\0\0", "bad_header"),
        (b"s", {**AUDIO, "seq": ""}, b"\0\0", "bad_header"),
        (b"s", {**AUDIO, "endpoint": "both"}, b"\0\0", "bad_header"),
        (b"s", {**AUDIO, "endpoint": ""}, b"\0\0", "bad_header"),
        (b"s", {**AUDIO, "endpoint": b"\xff"}, b"\0\0", "bad_header"),
        (b"s", AUDIO, b"\0\0\0", "partial_sample"),
        (b"s", {**AUDIO, "channels": "2"}, b"\0\0", "partial_sample"),
        (b"s", {**AUDIO, "encoding": "pcm_f32le"}, b"\0\0", "partial_sample"),
        (b"s", {"type": "end", "seq": "1"}, b"x", "bad_value"),
    ],
)
def test_rejections(key: bytes | None, hdrs: dict[str, str | bytes], value: bytes, reason: str) -> None:
    with pytest.raises(Rejected) as caught:
        parse(key, headers(**hdrs), value)
    assert caught.value.reason == reason and caught.value.detail


def test_empty_audio_chunk_is_valid() -> None:
    assert parse(b"s", headers(**AUDIO), b"").audio == b""


def test_dead_letter_carries_the_original_and_is_schema_valid() -> None:
    raw = [*headers(**{**AUDIO, "encoding": "pcm_u8"}), ("junk", b"\xff")]
    with pytest.raises(Rejected) as caught:
        parse(b"call-9", raw, b"\x01\x02\x03")
    letter = dead_letter(
        caught.value,
        session_id="call-9",
        topic="stt.audio",
        partition=3,
        offset=1207,
        timestamp=1767225600000,
        headers=raw,
        value=b"\x01\x02\x03",
        at=1767225600001,
    )
    validate("dead_letter", letter)
    assert letter["reason"] == "unknown_encoding"
    assert base64.b64decode(letter["value_b64"]) == b"\x01\x02\x03"
    assert letter["headers"]["junk"] is None and letter["headers"]["encoding"] == "pcm_u8"


def test_same_stream_ignores_endpoint_and_model_but_not_format() -> None:
    base = AudioFormat("pcm_mulaw", 8000)
    assert base.same_stream(AudioFormat("pcm_mulaw", 8000, endpoint="manual", model="x"))
    assert not base.same_stream(AudioFormat("pcm_alaw", 8000))
    assert not base.same_stream(AudioFormat("pcm_mulaw", 16000))
    assert not base.same_stream(AudioFormat("pcm_mulaw", 8000, channels=2))


# -- hostile input: sizes and digit counts are checked before anything is converted -----------------


LONG = 64  # an echoed value is at most this long in a detail, so a detail stays short


def rejection(
    key: bytes | None, hdrs: list[tuple[str, bytes | None]], value: bytes | None = b"", **kw: Any
) -> Rejected:
    with pytest.raises(Rejected) as caught:
        parse(key, hdrs, value, **kw)
    assert len(caught.value.detail) < 200, caught.value.detail
    return caught.value


ROOMY = InputLimits(max_header_bytes=10_000)  # so that the digit check itself is what rejects


def test_a_5000_digit_seq_is_rejected_not_a_crash() -> None:
    # Regression: int() of more than 4300 digits raised ValueError, which crashed the worker.
    assert rejection(b"s", headers(**{**AUDIO, "seq": "9" * 5000})).reason == "oversized"
    assert rejection(b"s", headers(**{**AUDIO, "seq": "9" * 5000}), limits=ROOMY).reason == "bad_header"
    assert rejection(b"s", headers(type="end", seq="1" * 5000), limits=ROOMY).reason == "bad_header"
    assert rejection(b"s", headers(type="end", seq="1" * 1000)).reason == "bad_header"


def test_a_4301_digit_sample_rate_or_channels_is_rejected_not_a_crash() -> None:
    # Regression: as for seq.
    assert rejection(b"s", headers(**{**AUDIO, "sample_rate": "1" * 4301})).reason == "oversized"
    assert rejection(b"s", headers(**{**AUDIO, "sample_rate": "1" * 4301}), limits=ROOMY).reason == "bad_header"
    assert rejection(b"s", headers(**{**AUDIO, "channels": "1" * 4301}), limits=ROOMY).reason == "bad_header"
    assert rejection(b"s", headers(**{**AUDIO, "sample_rate": "1" * 1000})).reason == "bad_header"


def test_seq_range() -> None:
    assert parse(b"s", headers(type="end", seq=str(MAX_SEQ)), None).seq == MAX_SEQ
    assert MAX_SEQ + 1 < 2**63 - 1  # next_input_seq = seq + 1 stays a signed 64-bit integer
    assert rejection(b"s", headers(type="end", seq=str(MAX_SEQ + 1))).reason == "bad_header"
    assert rejection(b"s", headers(type="end", seq=str(2**63))).reason == "bad_header"


def test_a_600_kb_key_is_oversized() -> None:
    rejected = rejection(b"k" * 600_000, headers(**AUDIO))
    assert rejected.reason == "oversized" and "600000" in rejected.detail


def test_key_limit_boundary() -> None:
    assert parse(b"k" * 256, headers(**AUDIO), b"").session_id == "k" * 256
    assert rejection(b"k" * 257, headers(**AUDIO)).reason == "oversized"
    assert parse(b"k" * 257, headers(**AUDIO), b"", limits=InputLimits(max_key_bytes=300)).session_id == "k" * 257


def test_header_value_limit_boundary() -> None:
    assert parse(b"s", [*headers(**AUDIO), ("trace", b"x" * 1024)], b"").type == "audio"
    rejected = rejection(b"s", [*headers(**AUDIO), ("trace", b"x" * 2_000_000)])
    assert rejected.reason == "oversized" and "2000000" in rejected.detail
    assert rejection(b"s", headers(**{**AUDIO, "model": "m" * 1025})).reason == "oversized"
    assert rejection(b"s", [*headers(**AUDIO), ("t", b"x" * 11)], limits=InputLimits(max_header_bytes=10)).reason == (
        "oversized"
    )


def test_header_name_limit_and_text() -> None:
    assert parse(b"s", [*headers(**AUDIO), ("n" * 256, b"x")], b"").type == "audio"
    rejected = rejection(b"s", [*headers(**AUDIO), ("n" * 100_000, b"x")])
    assert rejected.reason == "oversized" and "100000" in rejected.detail
    assert rejection(b"s", [*headers(**AUDIO), ("bad\udcff", b"x")]).reason == "bad_header"
    assert rejection(b"s", [*headers(**AUDIO), (b"raw", b"x")]).reason == "bad_header"  # type: ignore[list-item]


def test_details_echo_at_most_64_characters_of_a_value() -> None:
    for hdrs in (
        {**AUDIO, "type": "t" * 1000},
        {**AUDIO, "seq": "x" * 1000},
        {**AUDIO, "encoding": "e" * 1000},
        {**AUDIO, "endpoint": "p" * 1000},
    ):
        detail = rejection(b"s", headers(**hdrs)).detail
        assert "x" * (LONG + 1) not in detail and all(c * (LONG + 1) not in detail for c in "tep")


def test_input_limits_are_positive() -> None:
    with pytest.raises(ValueError, match="max_key_bytes"):
        InputLimits(max_key_bytes=0)


# -- dead letters within a size budget ------------------------------------------------------------------


def letter_for(
    rejected: Rejected,
    hdrs: list[tuple[str, bytes | None]],
    value: bytes | None,
    session_id: str | None = "s",
    **kw: Any,
) -> dict[str, Any]:
    letter = dead_letter(
        rejected,
        session_id=session_id,
        topic="stt.audio",
        partition=0,
        offset=5,
        timestamp=None,
        headers=hdrs,
        value=value,
        at=1,
        **kw,
    )
    validate("dead_letter", letter)
    return letter


def size(letter: dict[str, Any]) -> int:
    return len(orjson.dumps(letter))


def test_a_small_dead_letter_is_complete() -> None:
    letter = letter_for(Rejected("bad_header", "x"), headers(**AUDIO), b"\1\2\3")
    assert letter["value_size"] == 3 and base64.b64decode(letter["value_b64"]) == b"\1\2\3"
    assert not {"value_truncated", "value_sha256", "headers_truncated"} & set(letter)


def test_an_800_kb_value_with_a_bad_header_gives_a_dead_letter_within_1_mb() -> None:
    value = bytes(range(256)) * 3200  # 819,200 bytes: 1.09 MB in base64
    hdrs = headers(**{**AUDIO, "seq": "x"})
    with pytest.raises(Rejected) as caught:
        parse(b"call-1", hdrs, value)
    letter = letter_for(caught.value, hdrs, value, max_bytes=1_000_000)
    assert size(letter) <= 1_000_000
    assert letter["reason"] == "bad_header" and letter["value_truncated"] is True
    assert letter["value_size"] == len(value)
    assert letter["value_sha256"] == hashlib.sha256(value).hexdigest()
    prefix = base64.b64decode(letter["value_b64"])
    assert value.startswith(prefix) and len(prefix) > 700_000
    assert letter["headers"] == {k: v.decode() for k, v in hdrs if v is not None}
    assert "headers_truncated" not in letter


def test_oversized_headers_are_cut_in_the_dead_letter() -> None:
    hdrs = [*headers(**AUDIO), ("trace", b"x" * 2_000_000), *((f"h{i}", b"y" * 900) for i in range(5000))]
    rejected = rejection(b"s", hdrs)
    letter = letter_for(rejected, hdrs, b"\0" * 500_000, max_bytes=1_000_000)
    assert size(letter) <= 1_000_000 and letter["headers_truncated"] is True
    assert letter["headers"]["trace"] == "x" * 1024 and letter["headers"]["type"] == "audio"
    assert letter["value_size"] == 500_000


def test_unparseable_carries_the_error_cut_to_512_characters() -> None:
    letter = letter_for(unparseable(), [], b"", error="RecursionError: " + "z" * 10_000)
    assert letter["reason"] == "unparseable" and "RecursionError: zzz" in letter["detail"]
    assert letter["detail"].count("z") == ERROR_CHARS - len("RecursionError: ")


def test_a_huge_or_broken_session_id_is_left_out() -> None:
    assert letter_for(Rejected("oversized", "key"), [], b"", session_id="k" * 600_000)["session_id"] is None
    assert letter_for(Rejected("bad_header", "x"), [], b"", session_id="k\udcff")["session_id"] is None
    assert letter_for(Rejected("bad_header", "x"), [], b"", session_id="k" * 1024)["session_id"] == "k" * 1024


def test_header_names_that_are_not_utf8_text_still_serialize() -> None:
    letter = letter_for(Rejected("bad_header", "x"), [("a\udcff", b"1"), ("b", b"\xff")], b"")
    assert letter["headers"] == {"a\\udcff": "1", "b": None} and letter["headers_truncated"] is True


def test_dead_letter_budget_has_a_floor() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        letter_for(Rejected("bad_header", "x"), [], b"", max_bytes=DEAD_LETTER_MIN_BYTES - 1)


def big(piece: bytes, times: int) -> bytes:
    return piece * times


blobs = st.builds(big, st.binary(min_size=1, max_size=8), st.integers(0, 400_000)) | st.binary(max_size=64)
header_names = st.text(max_size=20) | st.builds(lambda c, n: c * n, st.characters(), st.integers(0, 3000))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    value=st.none() | blobs | st.builds(big, st.binary(min_size=1, max_size=8), st.integers(5_000, 400_000)),
    hdrs=st.lists(st.tuples(header_names, st.none() | blobs), max_size=12),
    session_id=st.none() | st.text(max_size=40) | st.builds(lambda n: "s" * n, st.integers(0, 5000)),
    detail=st.text(max_size=3000),
    error=st.none() | st.text(max_size=3000),
    max_bytes=st.integers(DEAD_LETTER_MIN_BYTES, 1_200_000) | st.integers(DEAD_LETTER_MIN_BYTES, 65_536),
)
def test_every_dead_letter_fits_its_budget_and_its_schema(
    value: bytes | None,
    hdrs: list[tuple[str, bytes | None]],
    session_id: str | None,
    detail: str,
    error: str | None,
    max_bytes: int,
) -> None:
    letter = letter_for(Rejected("bad_header", detail), hdrs, value, session_id, max_bytes=max_bytes, error=error)
    assert size(letter) <= max_bytes
    original = value or b""
    assert letter["value_size"] == len(original)
    prefix = base64.b64decode(letter["value_b64"])
    assert original.startswith(prefix)
    if letter.get("value_truncated"):
        assert len(prefix) < len(original) and letter["value_sha256"] == hashlib.sha256(original).hexdigest()
    else:
        assert prefix == original
