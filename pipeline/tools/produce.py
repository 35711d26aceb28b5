"""`stt-pipeline produce`: stream a WAV file to the audio topic as one session, following the wire contract.

The records are planned up front by :func:`plan_records` (pure: chunks, headers, send times) and then
published by :func:`produce_audio` through a :class:`pipeline.client.AudioSession` (which owns ``seq``
and the headers), either at realtime pace on an absolute clock (record ``k`` leaves at
``t0`` plus the audio time before it, so sleeping never accumulates drift) or as fast as possible.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple, TextIO

import numpy as np

from pipeline.audio import Encoding, bytes_per_sample, convert, decode, frame_bytes
from pipeline.client import TopicNotFound as TopicNotFound  # raised by produce_audio; callers catch it here
from pipeline.records import MAX_CHANNELS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

if TYPE_CHECKING:
    from pipeline.settings import Settings

Endpoint = Literal["auto", "manual"]

DEFAULT_CHUNK_MS = 100.0
DEFAULT_PAUSE_MS = 600.0
# RMS below this (about -40 dBFS) counts as a pause for --finalize-every-turn.
SILENCE_RMS = 0.01


class ProduceError(ValueError):
    """Input that cannot be turned into valid `stt.audio` records."""


@dataclass(frozen=True, slots=True)
class PcmAudio:
    """Interleaved audio bytes and the format the records will declare."""

    pcm: bytes
    encoding: Encoding
    sample_rate: int
    channels: int = 1

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / (bytes_per_sample(self.encoding) * self.channels * self.sample_rate)


class PlannedRecord(NamedTuple):
    """One record to publish: headers (text), value, and when to send it (ms of audio from the start)."""

    headers: dict[str, str]
    value: bytes
    at_ms: float


def read_wav(path: str | Path) -> PcmAudio:
    """A PCM WAV file as little-endian integer PCM: 16-bit → ``pcm_s16le``, 32-bit → ``pcm_s32le``.

    8-bit (unsigned) is widened to 16-bit and 24-bit to 32-bit, losslessly.
    """
    try:
        with wave.open(str(path), "rb") as wav:
            width = wav.getsampwidth()
            rate = wav.getframerate()
            channels = wav.getnchannels()
            data = wav.readframes(wav.getnframes())
    except wave.Error as exc:
        raise ProduceError(f"{path}: not a PCM WAV file the wave module can read ({exc})") from exc
    if width == 1:
        widened = (np.frombuffer(data, dtype=np.uint8).astype(np.int16) - 128) << 8
        return PcmAudio(widened.astype("<i2").tobytes(), "pcm_s16le", rate, channels)
    if width == 2:
        return PcmAudio(data, "pcm_s16le", rate, channels)
    if width == 3:
        raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3)
        padded = np.zeros((raw.shape[0], 4), dtype=np.uint8)
        padded[:, 1:] = raw
        return PcmAudio(padded.tobytes(), "pcm_s32le", rate, channels)
    if width == 4:
        return PcmAudio(data, "pcm_s32le", rate, channels)
    raise ProduceError(f"{path}: unsupported sample width of {width} bytes")


def prepare_audio(audio: PcmAudio, encoding: Encoding | None = None, sample_rate: int | None = None) -> PcmAudio:
    """``audio`` re-encoded and/or resampled as asked; a conversion downmixes to mono."""
    dst_encoding = encoding or audio.encoding
    dst_rate = sample_rate or audio.sample_rate
    if (dst_encoding, dst_rate) == (audio.encoding, audio.sample_rate):
        return audio
    pcm = convert(audio.pcm, audio.encoding, audio.sample_rate, audio.channels, dst_encoding, dst_rate)
    return PcmAudio(pcm, dst_encoding, dst_rate, 1)


def check_format(audio: PcmAudio) -> None:
    """Raise :class:`ProduceError` if the worker would reject this format."""
    if not MIN_SAMPLE_RATE <= audio.sample_rate <= MAX_SAMPLE_RATE:
        raise ProduceError(
            f"sample rate {audio.sample_rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}; "
            "resample with --sample-rate"
        )
    if not 1 <= audio.channels <= MAX_CHANNELS:
        raise ProduceError(f"{audio.channels} channels is outside 1..{MAX_CHANNELS}")


def plan_records(
    pcm: bytes,
    *,
    encoding: Encoding,
    sample_rate: int,
    channels: int = 1,
    endpoint: Endpoint = "auto",
    chunk_ms: float = DEFAULT_CHUNK_MS,
    model: str | None = None,
    language: str | None = None,
    finalize_every_turn: bool = False,
    pause_ms: float = DEFAULT_PAUSE_MS,
    end: bool = True,
    first_seq: int = 0,
) -> list[PlannedRecord]:
    """The session's records in order: audio chunks of ``chunk_ms`` (the last may be shorter), then ``end``.

    With ``finalize_every_turn``, a ``finalize`` record follows the chunk in which a pause after speech
    reaches ``pause_ms`` (chunk RMS below :data:`SILENCE_RMS` counts as pause).
    """
    frame = bytes_per_sample(encoding) * channels
    if len(pcm) % frame:
        raise ProduceError(f"{len(pcm)} bytes is not a whole number of {frame}-byte samples")
    step = frame_bytes(encoding, sample_rate, chunk_ms, channels)
    if step <= 0:
        raise ProduceError(f"--chunk-ms {chunk_ms} is shorter than one sample at {sample_rate} Hz")
    audio_headers = {
        "encoding": encoding,
        "sample_rate": str(sample_rate),
        "channels": str(channels),
        "endpoint": endpoint,
    }
    if model:
        audio_headers["model"] = model
    if language:
        audio_headers["language"] = language

    records: list[PlannedRecord] = []

    def add(kind: str, value: bytes, at_ms: float, extra: dict[str, str] | None = None) -> None:
        headers = {"type": kind, "seq": str(first_seq + len(records))}
        headers.update(extra or {})
        records.append(PlannedRecord(headers, value, at_ms))

    in_turn = False
    quiet_ms = 0.0
    for offset in range(0, len(pcm), step):
        chunk = pcm[offset : offset + step]
        start_ms = offset // frame * 1000.0 / sample_rate
        add("audio", chunk, start_ms, audio_headers)
        if not finalize_every_turn:
            continue
        end_ms = (offset + len(chunk)) // frame * 1000.0 / sample_rate
        samples = decode(chunk, encoding, channels)
        if float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) >= SILENCE_RMS:
            in_turn, quiet_ms = True, 0.0
        elif in_turn:
            quiet_ms += end_ms - start_ms
            if quiet_ms >= pause_ms:
                add("finalize", b"", end_ms)
                in_turn = False
    if end:
        add("end", b"", len(pcm) // frame * 1000.0 / sample_rate)
    return records


ProgressCallback = Callable[[float, float], None]


async def produce_audio(
    bootstrap: str | Settings,
    topic: str,
    session_id: str,
    pcm: bytes,
    *,
    encoding: Encoding,
    sample_rate: int,
    channels: int = 1,
    endpoint: Endpoint = "auto",
    chunk_ms: float = DEFAULT_CHUNK_MS,
    realtime: bool = True,
    progress: ProgressCallback | None = None,
    end: bool = True,
    model: str | None = None,
    language: str | None = None,
    finalize_every_turn: bool = False,
    pause_ms: float = DEFAULT_PAUSE_MS,
    first_seq: int = 0,
    stop: asyncio.Event | None = None,
    topic_timeout_s: float = 10.0,
) -> int:
    """Publish ``pcm`` as session ``session_id``; returns the number of records sent.

    ``bootstrap``: the Kafka connection, as :class:`Settings` (security included) or a plaintext bootstrap.

    ``progress(sent_s, total_s)`` is called after each audio chunk. If ``stop`` gets set, streaming
    stops early and (with ``end``) the ``end`` record still goes out, so the session closes cleanly.
    Raises :class:`TopicNotFound` if ``topic`` does not appear within ``topic_timeout_s``.
    """
    from pipeline.client import AudioProducer
    from pipeline.kafka.clients import connection

    plan = plan_records(
        pcm,
        encoding=encoding,
        sample_rate=sample_rate,
        channels=channels,
        endpoint=endpoint,
        chunk_ms=chunk_ms,
        model=model,
        language=language,
        finalize_every_turn=finalize_every_turn,
        pause_ms=pause_ms,
        end=end,
        first_seq=first_seq,
    )
    total_s = len(pcm) / (bytes_per_sample(encoding) * channels) / sample_rate
    producer = AudioProducer.from_settings(connection(bootstrap), topic=topic)
    await producer.start()
    try:
        # The realtime clock starts once the topic's metadata is in, i.e. when sending can.
        await producer.wait_for_topic(topic_timeout_s)
        session = producer.session(
            session_id,
            encoding=encoding,
            sample_rate=sample_rate,
            endpoint=endpoint,
            channels=channels,
            model=model,
            language=language,
            first_seq=first_seq,
        )
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for record in plan:
            kind = record.headers["type"]
            stopped = stop is not None and stop.is_set()
            if stopped and kind != "end":
                continue
            delay = t0 + record.at_ms / 1000.0 - loop.time()
            if realtime and not stopped and delay > 0:
                if stop is None:
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    if stop.is_set() and kind != "end":
                        continue
            if kind == "audio":
                await session.send(record.value)
                if progress is not None:
                    progress(session.audio_seconds_sent, total_s)
            elif kind == "finalize":
                await session.finalize()
            else:
                await session.end()
        await session.flush()
        return session.records_sent
    finally:
        await producer.stop()


class ProgressBar:
    """``\\r[#####.....] 12.3/30.0 s`` on a terminal stream, redrawn only when the text changes."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 30, label: str = "") -> None:
        self.stream = stream
        self.width = width
        self.label = label
        self._last = ""

    def render(self, done_s: float, total_s: float) -> str:
        fraction = 1.0 if total_s <= 0 else min(max(done_s / total_s, 0.0), 1.0)
        filled = math.floor(fraction * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        prefix = f"{self.label} " if self.label else ""
        return f"{prefix}[{bar}] {done_s:.1f}/{total_s:.1f} s"

    def __call__(self, done_s: float, total_s: float) -> None:
        text = self.render(done_s, total_s)
        if text != self._last:
            self._last = text
            self.stream.write("\r" + text)
            self.stream.flush()

    def close(self) -> None:
        if self._last:
            self.stream.write("\n")
            self.stream.flush()


async def produce_file(
    path: str | Path,
    *,
    bootstrap: str | Settings,
    topic: str,
    session_id: str,
    encoding: Encoding | None = None,
    sample_rate: int | None = None,
    endpoint: Endpoint = "auto",
    chunk_ms: float = DEFAULT_CHUNK_MS,
    realtime: bool = True,
    finalize_every_turn: bool = False,
    pause_ms: float = DEFAULT_PAUSE_MS,
    model: str | None = None,
    language: str | None = None,
    end: bool = True,
    show_progress: bool = True,
    stop: asyncio.Event | None = None,
    log: TextIO = sys.stderr,
) -> int:
    """Read, convert and publish one WAV file; returns the number of records sent."""
    audio = prepare_audio(read_wav(path), encoding, sample_rate)
    check_format(audio)
    bar = ProgressBar(log, label=session_id) if show_progress else None
    sent_s = 0.0

    def on_progress(done_s: float, total_s: float) -> None:
        nonlocal sent_s
        sent_s = done_s
        if bar is not None:
            bar(done_s, total_s)

    started = time.monotonic()
    try:
        sent = await produce_audio(
            bootstrap,
            topic,
            session_id,
            audio.pcm,
            encoding=audio.encoding,
            sample_rate=audio.sample_rate,
            channels=audio.channels,
            endpoint=endpoint,
            chunk_ms=chunk_ms,
            realtime=realtime,
            progress=on_progress,
            end=end,
            model=model,
            language=language,
            finalize_every_turn=finalize_every_turn,
            pause_ms=pause_ms,
            stop=stop,
        )
    finally:
        if bar is not None:
            bar.close()
    portion = f"{audio.duration_s:.1f} s"
    if sent_s < audio.duration_s - 1e-6:
        portion = f"{sent_s:.1f}/{portion}"
    log.write(
        f"{session_id}: sent {sent} records ({portion} of {audio.encoding} at {audio.sample_rate} Hz, "
        f"{audio.channels} ch) to {topic} in {time.monotonic() - started:.1f} s\n"
    )
    log.flush()
    return sent
