"""Tests of pipeline.audio: encodings, G.711 tables, silence, frame sizes, conversion and resampling."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray

from pipeline.audio import (
    ENCODINGS,
    AudioFormatError,
    Encoding,
    StreamConverter,
    bytes_per_sample,
    convert,
    decode,
    duration_ms,
    encode,
    frame_bytes,
    parse_encoding,
    silence,
)

RATES = (8000, 11025, 16000, 22050, 24000, 44100, 48000)
G711: tuple[Encoding, ...] = ("pcm_mulaw", "pcm_alaw")

unit_floats = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False, width=32)
signals = arrays(np.float32, st.integers(0, 400), elements=unit_floats)


def g711_levels(encoding: Encoding) -> NDArray[np.float32]:
    return np.unique(decode(bytes(range(256)), encoding))


def assert_round_trip(x: NDArray[np.float32], encoding: Encoding) -> None:
    y = decode(encode(x, encoding), encoding)
    assert y.dtype == np.float32
    assert y.shape == x.shape
    err = np.abs(y.astype(np.float64) - x)
    if encoding == "pcm_f32le":
        assert np.array_equal(y, x)
    elif encoding == "pcm_f16le":
        assert np.all(err <= np.abs(x) * 2.0**-11 + 2.0**-24)
    elif encoding == "pcm_s16le":
        assert np.all(err <= 1 / 32768)
    elif encoding == "pcm_s32le":
        assert np.all(err <= 1e-7)
    else:
        levels = g711_levels(encoding).astype(np.float64)
        upper = np.clip(np.searchsorted(levels, x), 1, levels.size - 1)
        step = levels[upper] - levels[upper - 1]
        assert np.all(err <= step), "G.711 round trip must land within one quantization step"


def test_encodings_and_parse() -> None:
    assert ENCODINGS == ("pcm_s16le", "pcm_s32le", "pcm_f16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw")
    for name in ENCODINGS:
        assert parse_encoding(name) == name


@pytest.mark.parametrize("name", ["pcm_s24le", "PCM_S16LE", "", "s16le", "pcm_mulaw "])
def test_parse_unknown_encoding(name: str) -> None:
    with pytest.raises(AudioFormatError, match="unknown audio encoding") as info:
        parse_encoding(name)
    assert "pcm_s16le" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bytes_per_sample() -> None:
    assert {e: bytes_per_sample(e) for e in ENCODINGS} == {
        "pcm_s16le": 2,
        "pcm_s32le": 4,
        "pcm_f16le": 2,
        "pcm_f32le": 4,
        "pcm_mulaw": 1,
        "pcm_alaw": 1,
    }


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_round_trip_full_range(encoding: Encoding) -> None:
    x = np.linspace(-1.0, 1.0, 20001, dtype=np.float32)
    assert_round_trip(x, encoding)


@pytest.mark.parametrize("encoding", ENCODINGS)
@given(x=signals)
def test_round_trip_property(encoding: Encoding, x: NDArray[np.float32]) -> None:
    assert_round_trip(x, encoding)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_encode_clips_and_cleans(encoding: Encoding) -> None:
    y = decode(encode(np.array([2.0, -3.0, np.nan, np.inf, -np.inf]), encoding), encoding)
    top = decode(encode(np.array([1.0, -1.0]), encoding), encoding)
    assert np.array_equal(y, np.array([top[0], top[1], y[2], top[0], top[1]], dtype=np.float32))
    assert abs(y[2]) <= 8 / 32768


def test_integer_scaling_exact() -> None:
    assert encode(np.array([0.5, -0.5, -1.0, 1.0]), "pcm_s16le") == np.array(
        [16384, -16384, -32768, 32767], dtype="<i2"
    ).tobytes()
    assert decode(np.array([16384, -32768], dtype="<i2").tobytes(), "pcm_s16le").tolist() == [0.5, -1.0]
    assert decode(np.array([2**30, -(2**31)], dtype="<i4").tobytes(), "pcm_s32le").tolist() == [0.5, -1.0]
    assert encode(np.array([0.25]), "pcm_f32le") == np.array([0.25], dtype="<f4").tobytes()
    assert encode(np.array([0.25]), "pcm_f16le") == np.array([0.25], dtype="<f2").tobytes()


def test_float_decode_clips_out_of_range() -> None:
    data = np.array([1.5, -7.0, np.nan, 0.25], dtype="<f4").tobytes()
    assert decode(data, "pcm_f32le").tolist() == [1.0, -1.0, 0.0, 0.25]


def test_mulaw_table_spot_values() -> None:
    table = decode(bytes(range(256)), "pcm_mulaw") * 32768
    assert table[0x00] == -32124
    assert table[0x80] == 32124
    assert table[0xFF] == 0
    assert table[0x7F] == 0
    assert table[0xFE] == 8
    assert table[0x7E] == -8
    assert table[0x8F] == 16764 and table[0x0F] == -16764
    assert np.array_equal(np.sort(table[:128]), np.sort(-table[128:]))


def test_alaw_table_spot_values() -> None:
    table = decode(bytes(range(256)), "pcm_alaw") * 32768
    assert table[0xD5] == 8
    assert table[0x55] == -8
    assert table[0xAA] == 32256
    assert table[0x2A] == -32256
    assert table[0xD4] == 24 and table[0x54] == -24
    assert 0 not in table, "A-law has no zero level: silence is the smallest step"


def test_g711_encode_spot_values() -> None:
    x = np.array([0.0, 1.0, -1.0, 8 / 32768, -8 / 32768])
    assert encode(x, "pcm_mulaw") == bytes([0xFF, 0x80, 0x00, 0xFE, 0x7E])
    assert encode(x, "pcm_alaw") == bytes([0xD5, 0xAA, 0x2A, 0xD5, 0x55])


@pytest.mark.parametrize("encoding", G711)
def test_g711_codes_are_fixed_points(encoding: Encoding) -> None:
    codes = bytes(range(256))
    again = encode(decode(codes, encoding), encoding)
    if encoding == "pcm_mulaw":
        # μ-law has two codes for zero (0x7F, "negative zero", and 0xFF); both encode back to 0xFF.
        assert again == codes[:0x7F] + b"\xff" + codes[0x80:]
    else:
        assert again == codes


@pytest.mark.parametrize("encoding", G711)
def test_g711_matches_reference_implementation(encoding: Encoding) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    pcm = np.arange(-32768, 32768, dtype="<i2")
    to_law, from_law = (
        (audioop.lin2ulaw, audioop.ulaw2lin) if encoding == "pcm_mulaw" else (audioop.lin2alaw, audioop.alaw2lin)
    )
    assert encode(pcm / 32768.0, encoding) == to_law(pcm.tobytes(), 2)
    reference = np.frombuffer(from_law(bytes(range(256)), 2), dtype="<i2") / 32768.0
    assert np.array_equal(decode(bytes(range(256)), encoding), reference)


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_silence_bytes(channels: int) -> None:
    assert silence("pcm_s16le", 5, channels) == bytes(10 * channels)
    assert silence("pcm_s32le", 5, channels) == bytes(20 * channels)
    assert silence("pcm_f16le", 5, channels) == bytes(10 * channels)
    assert silence("pcm_f32le", 5, channels) == bytes(20 * channels)
    assert silence("pcm_mulaw", 5, channels) == b"\xff" * 5 * channels
    assert silence("pcm_alaw", 5, channels) == b"\xd5" * 5 * channels
    assert silence("pcm_mulaw", 0, channels) == b""


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_silence_decodes_to_silence(encoding: Encoding) -> None:
    y = decode(silence(encoding, 100, 2), encoding, 2)
    assert y.shape == (100,)
    # A-law's idle code 0xD5 is its smallest positive level, +8/32768; every other format decodes 0.
    expected = 8 / 32768 if encoding == "pcm_alaw" else 0.0
    assert np.all(y == np.float32(expected))


def test_silence_rejects_negative_count() -> None:
    with pytest.raises(AudioFormatError):
        silence("pcm_s16le", -1)


@pytest.mark.parametrize("encoding", [e for e in ENCODINGS if bytes_per_sample(e) > 1])
def test_partial_sample_rejected(encoding: Encoding) -> None:
    data = silence(encoding, 10)
    with pytest.raises(AudioFormatError, match="whole number"):
        decode(data[:-1], encoding)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_partial_frame_rejected(encoding: Encoding) -> None:
    with pytest.raises(AudioFormatError, match="whole number"):
        decode(silence(encoding, 3), encoding, channels=2)
    with pytest.raises(AudioFormatError):
        decode(b"", encoding, channels=0)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_empty_decodes_empty(encoding: Encoding) -> None:
    y = decode(b"", encoding, 2)
    assert y.dtype == np.float32 and y.shape == (0,)
    assert encode(y, encoding) == b""


def test_stereo_downmix() -> None:
    stereo = np.array([[0.5, -0.25], [1.0, 1.0], [-1.0, 1.0]]).ravel()
    assert np.allclose(decode(encode(stereo, "pcm_s16le"), "pcm_s16le", 2), [0.125, 1.0, 0.0], atol=1 / 32768)
    assert decode(encode(stereo, "pcm_f32le"), "pcm_f32le", 2).tolist() == [0.125, 1.0, 0.0]
    quad = np.tile(np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32), 5)
    assert np.allclose(decode(encode(quad, "pcm_f32le"), "pcm_f32le", 4), 0.25)


def test_frame_bytes() -> None:
    assert frame_bytes("pcm_mulaw", 8000, 100) == 800
    assert frame_bytes("pcm_s16le", 16000, 100) == 3200
    assert frame_bytes("pcm_f32le", 48000, 100) == 19200
    assert frame_bytes("pcm_s16le", 16000, 20, channels=2) == 1280
    assert frame_bytes("pcm_s16le", 44100, 10) == 882
    assert frame_bytes("pcm_alaw", 11025, 1) == 11  # 11.025 samples, floored
    assert frame_bytes("pcm_s32le", 22050, 0.1) == 8
    assert frame_bytes("pcm_s16le", 16000, 0) == 0


def test_frame_bytes_rejects_bad_parameters() -> None:
    with pytest.raises(AudioFormatError):
        frame_bytes("pcm_s16le", 0, 20)
    with pytest.raises(AudioFormatError):
        frame_bytes("pcm_s16le", 16000, 20, channels=0)


def test_duration_ms() -> None:
    assert duration_ms(3200, "pcm_s16le", 16000) == 100.0
    assert duration_ms(800, "pcm_mulaw", 8000) == 100.0
    assert duration_ms(19200, "pcm_f32le", 48000, channels=2) == 50.0
    assert duration_ms(3, "pcm_s16le", 16000) == duration_ms(2, "pcm_s16le", 16000) == 1 / 16
    assert duration_ms(0, "pcm_alaw", 8000) == 0.0


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("rate", RATES)
def test_frame_bytes_and_duration_agree(encoding: Encoding, rate: int) -> None:
    for ms in (10, 20, 40, 100, 250):
        assert duration_ms(frame_bytes(encoding, rate, ms), encoding, rate) == pytest.approx(ms, abs=1000 / rate)


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> NDArray[np.float32]:
    t = np.arange(round(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: NDArray[np.float32], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * rate / x.size)


def test_convert_same_format_is_identity() -> None:
    data = encode(sine(440, 16000, 0.1), "pcm_s16le")
    assert convert(data, "pcm_s16le", 16000, 1, "pcm_s16le", 16000) == data


def test_convert_reencodes_and_downmixes() -> None:
    left, right = sine(440, 8000, 0.1), sine(440, 8000, 0.1, amplitude=0.3)
    stereo = np.stack((left, right), axis=1).ravel()
    out = convert(encode(stereo, "pcm_f32le"), "pcm_f32le", 8000, 2, "pcm_mulaw", 8000)
    assert len(out) == left.size
    assert np.abs(decode(out, "pcm_mulaw") - (left + right) / 2).max() < 0.02


@pytest.mark.parametrize(("src", "dst"), [(48000, 16000), (8000, 16000), (44100, 16000), (16000, 8000)])
def test_convert_resamples(src: int, dst: int) -> None:
    x = sine(1000, src, 0.5)
    out = decode(convert(encode(x, "pcm_f32le"), "pcm_f32le", src, 1, "pcm_s16le", dst), "pcm_s16le")
    assert abs(out.size - x.size * dst / src) <= 1
    assert peak_hz(out, dst) == pytest.approx(1000, abs=3)
    middle = out[out.size // 4 : -out.size // 4]
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_convert_empty() -> None:
    assert convert(b"", "pcm_s16le", 48000, 2, "pcm_mulaw", 8000) == b""


def test_convert_rejects_bad_input() -> None:
    with pytest.raises(AudioFormatError):
        convert(b"\x00", "pcm_s16le", 16000, 1, "pcm_s16le", 8000)
    with pytest.raises(AudioFormatError):
        convert(b"", "pcm_s16le", 0, 1, "pcm_s16le", 8000)


def push_in_pieces(converter: StreamConverter, data: bytes, sizes: list[int]) -> bytes:
    out, i, k = [], 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        out.append(converter.push(data[i : i + n]))
        i, k = i + n, k + 1
    out.append(converter.flush())
    return b"".join(out)


@settings(max_examples=40, deadline=None)
@given(
    src_encoding=st.sampled_from(ENCODINGS),
    dst_encoding=st.sampled_from(ENCODINGS),
    src_rate=st.sampled_from(RATES),
    dst_rate=st.sampled_from(RATES),
    channels=st.integers(1, 2),
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=20),
    seconds=st.floats(0.0, 0.5),
)
def test_stream_converter_matches_whole_convert(
    src_encoding: Encoding,
    dst_encoding: Encoding,
    src_rate: int,
    dst_rate: int,
    channels: int,
    sizes: list[int],
    seconds: float,
) -> None:
    x = np.tile(sine(700, src_rate, seconds)[:, None], (1, channels)).ravel()
    data = encode(x, src_encoding)
    whole = decode(convert(data, src_encoding, src_rate, channels, dst_encoding, dst_rate), dst_encoding)
    converter = StreamConverter(src_encoding, src_rate, channels, dst_encoding, dst_rate)
    streamed = decode(push_in_pieces(converter, data, sizes), dst_encoding)
    assert abs(streamed.size - whole.size) <= 2
    n = min(streamed.size, whole.size)
    assert np.allclose(streamed[:n], whole[:n], atol=0.05)


def test_stream_converter_same_rate_passthrough_and_split_samples() -> None:
    data = encode(sine(300, 16000, 0.05), "pcm_s16le")
    converter = StreamConverter("pcm_s16le", 16000, 1, "pcm_f32le", 16000)
    out = converter.push(data[:3]) + converter.push(data[3:101]) + converter.push(data[101:]) + converter.flush()
    assert out == convert(data, "pcm_s16le", 16000, 1, "pcm_f32le", 16000)


def test_stream_converter_is_reusable_after_flush() -> None:
    data = encode(sine(300, 48000, 0.2), "pcm_f32le")
    converter = StreamConverter("pcm_f32le", 48000, 1, "pcm_s16le", 16000)
    first = converter.push(data) + converter.flush()
    second = converter.push(data) + converter.flush()
    assert first == second
    assert len(first) == 2 * 3200
