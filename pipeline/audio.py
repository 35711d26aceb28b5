"""Audio encodings of the Cartesia STT protocol: byte ↔ float32 conversion, sizes, silence, resampling.

Samples are mono ``float32`` in [-1, 1]. Linear PCM is little-endian; integer formats map full scale
to ±1 (``int16`` by 1/32768, ``int32`` by 1/2**31). μ-law and A-law follow ITU-T G.711 (the classic
Sun reference implementation): decoding by 256-entry tables of the standard 16-bit values scaled by
1/32768, encoding by the standard segment search, tabulated once for all 65536 ``int16`` inputs.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Final, Literal, get_args

import numpy as np
import soxr
from numpy.typing import NDArray

Encoding = Literal["pcm_s16le", "pcm_s32le", "pcm_f16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw"]
ENCODINGS: Final[tuple[Encoding, ...]] = get_args(Encoding)

_BYTES_PER_SAMPLE: Final[dict[Encoding, int]] = {
    "pcm_s16le": 2,
    "pcm_s32le": 4,
    "pcm_f16le": 2,
    "pcm_f32le": 4,
    "pcm_mulaw": 1,
    "pcm_alaw": 1,
}
_MULAW_SILENCE: Final = 0xFF
_ALAW_SILENCE: Final = 0xD5
_RESAMPLE_QUALITY: Final = "HQ"


class AudioFormatError(ValueError):
    """Audio bytes or parameters that do not fit the declared format."""


def parse_encoding(name: str) -> Encoding:
    """The :data:`Encoding` called ``name`` (exact protocol spelling)."""
    for encoding in ENCODINGS:
        if name == encoding:
            return encoding
    raise AudioFormatError(f"unknown audio encoding {name!r}; expected one of {', '.join(ENCODINGS)}")


def bytes_per_sample(encoding: Encoding) -> int:
    """Bytes of one sample of one channel."""
    return _BYTES_PER_SAMPLE[encoding]


def _check_channels(channels: int) -> None:
    if channels < 1:
        raise AudioFormatError(f"channels must be >= 1, got {channels}")


def _check_rate(sample_rate: int) -> None:
    if sample_rate <= 0:
        raise AudioFormatError(f"sample rate must be > 0, got {sample_rate}")


@cache
def _mulaw_decode_table() -> NDArray[np.float32]:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    linear = np.where(u & 0x80, 0x84 - t, t - 0x84)
    return (linear / 32768.0).astype(np.float32)


@cache
def _alaw_decode_table() -> NDArray[np.float32]:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    linear = np.where(a & 0x80, t, -t)
    return (linear / 32768.0).astype(np.float32)


def _all_int16() -> NDArray[np.int32]:
    """Every int16 value, ordered by its uint16 bit pattern (the index of the encode tables)."""
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)


@cache
def _mulaw_encode_table() -> NDArray[np.uint8]:
    pcm = _all_int16() >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(pcm), 8159) + 33
    seg = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), magnitude)
    quant = (magnitude >> np.minimum(seg + 1, 8)) & 0x0F
    code = np.where(seg >= 8, 0x7F, (seg << 4) | quant) ^ mask
    return code.astype(np.uint8)


@cache
def _alaw_encode_table() -> NDArray[np.uint8]:
    pcm = _all_int16() >> 3
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    magnitude = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF]), magnitude)
    quant = np.where(seg < 2, magnitude >> 1, magnitude >> np.maximum(seg, 1)) & 0x0F
    code = np.where(seg >= 8, 0x7F, (seg << 4) | quant) ^ mask
    return code.astype(np.uint8)


def decode(data: bytes, encoding: Encoding, channels: int = 1) -> NDArray[np.float32]:
    """Mono float32 samples in [-1, 1] from interleaved ``data``; channels are averaged."""
    _check_channels(channels)
    frame = bytes_per_sample(encoding) * channels
    if len(data) % frame:
        raise AudioFormatError(
            f"{len(data)} bytes is not a whole number of {encoding} frames "
            f"({channels} channel(s) x {bytes_per_sample(encoding)} bytes)"
        )
    samples: NDArray[np.float32]
    if encoding == "pcm_s16le":
        samples = (np.frombuffer(data, dtype="<i2") / 32768.0).astype(np.float32)
    elif encoding == "pcm_s32le":
        samples = (np.frombuffer(data, dtype="<i4") / 2147483648.0).astype(np.float32)
    elif encoding == "pcm_f16le":
        samples = np.frombuffer(data, dtype="<f2").astype(np.float32)
    elif encoding == "pcm_f32le":
        samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
    elif encoding == "pcm_mulaw":
        samples = _mulaw_decode_table()[np.frombuffer(data, dtype=np.uint8)]
    else:
        samples = _alaw_decode_table()[np.frombuffer(data, dtype=np.uint8)]
    if encoding in ("pcm_f16le", "pcm_f32le"):
        samples = np.clip(np.nan_to_num(samples, nan=0.0), -1.0, 1.0)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return samples


def _to_int16(clipped: NDArray[np.float64]) -> NDArray[np.int16]:
    return np.clip(np.rint(clipped * 32768.0), -32768, 32767).astype(np.int16)


def encode(samples: NDArray[np.floating[Any]], encoding: Encoding) -> bytes:
    """Mono ``samples`` (clipped to [-1, 1]) as ``encoding`` bytes."""
    x = np.clip(np.nan_to_num(np.asarray(samples, dtype=np.float64).ravel(), nan=0.0), -1.0, 1.0)
    if encoding == "pcm_s16le":
        return _to_int16(x).astype("<i2").tobytes()
    if encoding == "pcm_s32le":
        scaled = np.clip(np.rint(x * 2147483648.0), -2147483648, 2147483647)
        return scaled.astype("<i4").tobytes()
    if encoding == "pcm_f16le":
        return x.astype("<f2").tobytes()
    if encoding == "pcm_f32le":
        return x.astype("<f4").tobytes()
    index = _to_int16(x).view(np.uint16)
    table = _mulaw_encode_table() if encoding == "pcm_mulaw" else _alaw_encode_table()
    return table[index].tobytes()


def silence(encoding: Encoding, n_samples: int, channels: int = 1) -> bytes:
    """Digital silence: zeros for linear PCM, 0xFF for μ-law, 0xD5 for A-law (G.711 idle codes)."""
    _check_channels(channels)
    if n_samples < 0:
        raise AudioFormatError(f"n_samples must be >= 0, got {n_samples}")
    n_bytes = n_samples * channels * bytes_per_sample(encoding)
    if encoding == "pcm_mulaw":
        return bytes([_MULAW_SILENCE]) * n_bytes
    if encoding == "pcm_alaw":
        return bytes([_ALAW_SILENCE]) * n_bytes
    return bytes(n_bytes)


def frame_bytes(encoding: Encoding, sample_rate: int, frame_ms: float, channels: int = 1) -> int:
    """Bytes in ``frame_ms`` of audio, rounded down to whole samples."""
    _check_channels(channels)
    _check_rate(sample_rate)
    # The epsilon keeps exact products like 44100 * 0.01 from flooring to one sample less.
    n_samples = int(sample_rate * frame_ms / 1000.0 + 1e-9)
    return max(n_samples, 0) * channels * bytes_per_sample(encoding)


def duration_ms(n_bytes: int, encoding: Encoding, sample_rate: int, channels: int = 1) -> float:
    """Milliseconds of audio in ``n_bytes`` (whole samples only)."""
    _check_channels(channels)
    _check_rate(sample_rate)
    return (n_bytes // (bytes_per_sample(encoding) * channels)) * 1000.0 / sample_rate


def convert(
    data: bytes,
    src_encoding: Encoding,
    src_rate: int,
    src_channels: int,
    dst_encoding: Encoding,
    dst_rate: int,
) -> bytes:
    """Re-encode ``data`` as mono ``dst_encoding`` at ``dst_rate`` (one stateless call)."""
    _check_rate(src_rate)
    _check_rate(dst_rate)
    samples = decode(data, src_encoding, src_channels)
    if src_rate != dst_rate and samples.size:
        samples = soxr.resample(samples, src_rate, dst_rate, quality=_RESAMPLE_QUALITY)
    return encode(samples, dst_encoding)


class StreamConverter:
    """:func:`convert` for a stream of chunks, keeping resampler state and split samples across pushes."""

    def __init__(
        self,
        src_encoding: Encoding,
        src_rate: int,
        src_channels: int,
        dst_encoding: Encoding,
        dst_rate: int,
    ) -> None:
        _check_rate(src_rate)
        _check_rate(dst_rate)
        _check_channels(src_channels)
        self._src_encoding = src_encoding
        self._src_channels = src_channels
        self._dst_encoding = dst_encoding
        self._frame = bytes_per_sample(src_encoding) * src_channels
        self._pending = b""
        self._resampler: Any = (
            soxr.ResampleStream(src_rate, dst_rate, 1, dtype="float32", quality=_RESAMPLE_QUALITY)
            if src_rate != dst_rate
            else None
        )

    def push(self, data: bytes) -> bytes:
        """Converted audio for ``data``; a trailing partial sample waits for the next push."""
        data = self._pending + data
        whole = len(data) - len(data) % self._frame
        self._pending = data[whole:]
        samples = decode(data[:whole], self._src_encoding, self._src_channels)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        return encode(samples, self._dst_encoding)

    def flush(self) -> bytes:
        """The resampler's delayed tail; resets the stream. A dangling partial sample is dropped."""
        self._pending = b""
        if self._resampler is None:
            return b""
        tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._resampler.clear()
        return encode(tail, self._dst_encoding)
