"""The parser and ``schemas/audio-headers.schema.json`` accept and reject the same header values."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import ValidationError

from pipeline.audio import ENCODINGS
from pipeline.records import MAX_CHANNELS, MAX_SAMPLE_RATE, MAX_SEQ, MIN_SAMPLE_RATE, InputLimits, Rejected, parse
from pipeline.schemas import validate

AUDIO = {"type": "audio", "seq": "0", "encoding": "pcm_s16le", "sample_rate": "16000"}
LIMITS = InputLimits()


def parser_accepts(headers: dict[str, str]) -> bool:
    try:
        parse(b"call", [(k, v.encode("utf-8")) for k, v in headers.items()], b"")
    except Rejected:
        return False
    return True


def schema_accepts(headers: dict[str, str]) -> bool:
    try:
        validate("audio_headers", headers)
    except ValidationError:
        return False
    return True


def agree(headers: dict[str, str]) -> bool:
    return parser_accepts(headers) == schema_accepts(headers)


def around(*values: int) -> list[str]:
    return [str(v + d) for v in values for d in (-1, 0, 1) if v + d >= 0]


ODD = ["", " ", "-1", "+1", "01", "00", "1.0", "1e3", "0x10", "\u0661", "\u00b9", "1 ", "abc", "9" * 19, "9" * 5000]
CASES: dict[str, list[str]] = {
    "seq": [*around(0, 1, 10, 10**17, MAX_SEQ, 2**62, 2**63 - 1, 2**63, 2**64), *ODD],
    "sample_rate": [*around(0, 1000, MIN_SAMPLE_RATE, 9999, 10000, 16000, 39999, 40000, 47999, MAX_SAMPLE_RATE), *ODD],
    "channels": [*around(0, 1, 2, MAX_CHANNELS, 10), *ODD],
    "encoding": [*ENCODINGS, "PCM_S16LE", "pcm_u8", "pcm_s16le ", "", "wav"],
    "endpoint": ["auto", "manual", "", "AUTO", "Manual", "both", "auto "],
}


@pytest.mark.parametrize(("field", "value"), [(f, v) for f, values in CASES.items() for v in values])
def test_parser_and_schema_agree_on_boundaries(field: str, value: str) -> None:
    headers = {**AUDIO, field: value}
    assert agree(headers), (parser_accepts(headers), schema_accepts(headers))
    if field == "seq":
        assert agree({"type": "end", "seq": value})


def test_the_boundaries_are_where_the_constants_say() -> None:
    assert parser_accepts({**AUDIO, "seq": str(MAX_SEQ)}) and not parser_accepts({**AUDIO, "seq": str(MAX_SEQ + 1)})
    assert parser_accepts({**AUDIO, "sample_rate": str(MIN_SAMPLE_RATE)})
    assert parser_accepts({**AUDIO, "sample_rate": str(MAX_SAMPLE_RATE)})
    assert not parser_accepts({**AUDIO, "sample_rate": str(MIN_SAMPLE_RATE - 1)})
    assert not parser_accepts({**AUDIO, "sample_rate": str(MAX_SAMPLE_RATE + 1)})
    assert parser_accepts({**AUDIO, "channels": str(MAX_CHANNELS)})
    assert not parser_accepts({**AUDIO, "channels": str(MAX_CHANNELS + 1)})


def test_every_sample_rate_and_channel_count_agrees() -> None:
    for rate in range(0, 100_001, 7):
        assert agree({**AUDIO, "sample_rate": str(rate)}), rate
    for channels in range(0, 100):
        assert agree({**AUDIO, "channels": str(channels)}), channels


@pytest.mark.parametrize("size", [LIMITS.max_header_bytes, LIMITS.max_header_bytes + 1])
def test_header_value_size_limit_agrees(size: int) -> None:
    assert agree({**AUDIO, "model": "m" * size})
    assert agree({**AUDIO, "x-trace": "t" * size})


@pytest.mark.parametrize("size", [LIMITS.max_header_name_bytes, LIMITS.max_header_name_bytes + 1])
def test_header_name_size_limit_agrees(size: int) -> None:
    assert agree({**AUDIO, "n" * size: "x"})


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(["seq", "sample_rate", "channels"]),
    value=st.text(st.sampled_from("0123456789"), min_size=1, max_size=22) | st.text(max_size=6),
)
def test_parser_and_schema_agree_on_any_number(field: str, value: str) -> None:
    assert agree({**AUDIO, field: value})
