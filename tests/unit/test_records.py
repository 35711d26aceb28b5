"""The input contract: parsing `stt.audio` records and building dead letters."""

from __future__ import annotations

import base64

import pytest

from pipeline.records import AudioFormat, Rejected, dead_letter, parse
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
        (b"s", {**AUDIO, "endpoint": "both"}, b"\0\0", "bad_header"),
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
