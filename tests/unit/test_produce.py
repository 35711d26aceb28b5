"""Tests of pipeline.tools.produce without Kafka: WAV reading, conversion, record planning, pacing."""

from __future__ import annotations

import asyncio
import io
import wave
from pathlib import Path
from typing import Any, ClassVar

import aiokafka
import numpy as np
import pytest

from pipeline.audio import decode, encode
from pipeline.records import parse
from pipeline.schemas import validate
from pipeline.tools.produce import (
    PcmAudio,
    PlannedRecord,
    ProduceError,
    ProgressBar,
    TopicNotFound,
    check_format,
    plan_records,
    prepare_audio,
    produce_audio,
    produce_file,
    read_wav,
)
from tests.support import virtual_time


def tone(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray[Any, Any]:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path: Path, frames: bytes, *, rate: int, channels: int, width: int) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(frames)
    return path


def kafka_view(records: list[PlannedRecord], session_id: str = "s-1") -> list[Any]:
    """Each record as the worker would parse it (raises if the input contract rejects it)."""
    return [parse(session_id.encode(), [(k, v.encode()) for k, v in r.headers.items()], r.value) for r in records]


def test_read_mono_16_bit(tmp_path: Path) -> None:
    pcm = encode(tone(0.25, 16000), "pcm_s16le")
    audio = read_wav(write_wav(tmp_path / "a.wav", pcm, rate=16000, channels=1, width=2))
    assert audio == PcmAudio(pcm, "pcm_s16le", 16000, 1)
    assert audio.duration_s == pytest.approx(0.25)


def test_read_stereo_32_bit(tmp_path: Path) -> None:
    mono = np.frombuffer(encode(tone(0.1, 8000), "pcm_s32le"), dtype="<i4")
    stereo = np.stack([mono, -mono], axis=1).astype("<i4").tobytes()
    audio = read_wav(write_wav(tmp_path / "b.wav", stereo, rate=8000, channels=2, width=4))
    assert (audio.encoding, audio.sample_rate, audio.channels, audio.pcm) == ("pcm_s32le", 8000, 2, stereo)


def test_read_8_and_24_bit_are_widened(tmp_path: Path) -> None:
    eight = read_wav(write_wav(tmp_path / "c.wav", bytes([0, 128, 255]), rate=8000, channels=1, width=1))
    assert eight.encoding == "pcm_s16le"
    assert np.frombuffer(eight.pcm, dtype="<i2").tolist() == [-32768, 0, 32512]
    samples = np.array([-(2**23), -1, 0, 2**23 - 1], dtype="<i4")
    packed = b"".join(int(s).to_bytes(3, "little", signed=True) for s in samples)
    wide = read_wav(write_wav(tmp_path / "d.wav", packed, rate=8000, channels=1, width=3))
    assert wide.encoding == "pcm_s32le"
    assert np.frombuffer(wide.pcm, dtype="<i4").tolist() == (samples.astype(np.int64) << 8).tolist()


def test_not_a_wav(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    path.write_bytes(b"not a wav file at all")
    with pytest.raises(ProduceError):
        read_wav(path)


def test_plan_seq_contiguous_and_end_last() -> None:
    pcm = encode(tone(1.05, 16000), "pcm_s16le")
    plan = plan_records(pcm, encoding="pcm_s16le", sample_rate=16000)
    assert [int(r.headers["seq"]) for r in plan] == list(range(len(plan)))
    assert [r.headers["type"] for r in plan] == ["audio"] * 11 + ["end"]
    assert plan[-1].value == b""
    assert b"".join(r.value for r in plan) == pcm
    assert [len(r.value) for r in plan[:-1]] == [3200] * 10 + [1600]
    assert [r.at_ms for r in plan] == pytest.approx([100.0 * k for k in range(11)] + [1050.0])
    first = plan[0].headers
    assert first == {
        "type": "audio",
        "seq": "0",
        "encoding": "pcm_s16le",
        "sample_rate": "16000",
        "channels": "1",
        "endpoint": "auto",
    }
    for record in plan:
        validate("audio_headers", record.headers)
    messages = kafka_view(plan)
    assert messages[-1].type == "end"


def test_plan_chunks_are_whole_samples() -> None:
    # 44.1 kHz stereo s32: 10 ms is 441 frames of 8 bytes, and the tail is an odd number of frames.
    pcm = bytes(8 * 4411)
    plan = plan_records(pcm, encoding="pcm_s32le", sample_rate=44100, channels=2, chunk_ms=10)
    assert all(len(r.value) % 8 == 0 for r in plan)
    assert {r.headers["channels"] for r in plan if r.headers["type"] == "audio"} == {"2"}
    assert len(plan[-2].value) == 8
    kafka_view(plan)


def test_plan_options_become_headers() -> None:
    plan = plan_records(
        bytes(320), encoding="pcm_s16le", sample_rate=16000, endpoint="manual", model="ink-whisper", language="de"
    )
    assert plan[0].headers["endpoint"] == "manual"
    assert (plan[0].headers["model"], plan[0].headers["language"]) == ("ink-whisper", "de")
    message = kafka_view(plan)[0]
    assert message.format.endpoint == "manual"
    assert message.format.language == "de"


def test_plan_without_end_and_first_seq() -> None:
    plan = plan_records(bytes(640), encoding="pcm_s16le", sample_rate=16000, chunk_ms=10, end=False, first_seq=7)
    assert [r.headers["seq"] for r in plan] == ["7", "8"]
    assert all(r.headers["type"] == "audio" for r in plan)


def test_plan_rejects_partial_samples_and_tiny_chunks() -> None:
    with pytest.raises(ProduceError):
        plan_records(bytes(3), encoding="pcm_s16le", sample_rate=16000)
    with pytest.raises(ProduceError):
        plan_records(bytes(4), encoding="pcm_s16le", sample_rate=8000, chunk_ms=0.05)


def test_finalize_after_each_pause() -> None:
    rate = 16000
    quiet = np.zeros(int(0.8 * rate), dtype=np.float32)
    speech = tone(0.5, rate)
    pcm = encode(np.concatenate([quiet, speech, quiet, speech, quiet[:1600]]), "pcm_s16le")
    plan = plan_records(pcm, encoding="pcm_s16le", sample_rate=rate, endpoint="manual", finalize_every_turn=True)
    kinds = [r.headers["type"] for r in plan]
    assert kinds.count("finalize") == 1
    assert kinds[-1] == "end"
    assert [int(r.headers["seq"]) for r in plan] == list(range(len(plan)))
    finalize = plan[kinds.index("finalize")]
    # Speech ends at 1.3 s; the pause reaches 600 ms with the chunk that ends at 1.9 s.
    assert finalize.at_ms == pytest.approx(1900.0)
    assert finalize.value == b""
    assert "encoding" not in finalize.headers
    assert [m.type for m in kafka_view(plan)] == kinds


def test_finalize_needs_speech_first() -> None:
    plan = plan_records(bytes(32000), encoding="pcm_s16le", sample_rate=16000, finalize_every_turn=True)
    assert "finalize" not in [r.headers["type"] for r in plan]


def test_convert_to_mulaw_downmixes_and_resamples() -> None:
    left = tone(0.5, 16000)
    stereo = np.stack([left, left], axis=1).ravel()
    audio = PcmAudio(encode(stereo, "pcm_s16le"), "pcm_s16le", 16000, 2)
    mulaw = prepare_audio(audio, "pcm_mulaw")
    assert (mulaw.encoding, mulaw.sample_rate, mulaw.channels) == ("pcm_mulaw", 16000, 1)
    assert len(mulaw.pcm) == left.size
    assert np.max(np.abs(decode(mulaw.pcm, "pcm_mulaw") - left)) < 0.02
    narrow = prepare_audio(audio, "pcm_mulaw", 8000)
    assert narrow.sample_rate == 8000
    assert abs(len(narrow.pcm) - left.size // 2) <= 2
    plan = plan_records(narrow.pcm, encoding=narrow.encoding, sample_rate=narrow.sample_rate)
    assert plan[0].headers["encoding"] == "pcm_mulaw"
    assert len(plan[0].value) == 800
    kafka_view(plan)


def test_prepare_is_identity_when_nothing_changes() -> None:
    audio = PcmAudio(bytes(400), "pcm_s16le", 16000, 2)
    assert prepare_audio(audio, "pcm_s16le", 16000) is audio


def test_check_format() -> None:
    check_format(PcmAudio(b"", "pcm_s16le", 48000, 2))
    with pytest.raises(ProduceError, match="--sample-rate"):
        check_format(PcmAudio(b"", "pcm_s16le", 96000, 1))
    with pytest.raises(ProduceError):
        check_format(PcmAudio(b"", "pcm_s16le", 16000, 9))


def test_progress_bar() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, width=10)
    assert bar.render(12.3, 30.0) == "[####......] 12.3/30.0 s"
    bar(0.0, 2.0)
    bar(0.0, 2.0)
    bar(2.0, 2.0)
    bar.close()
    assert stream.getvalue() == "\r[..........] 0.0/2.0 s\r[##########] 2.0/2.0 s\n"


class FakeProducer:
    """Stands in for AIOKafkaProducer: records what is sent, and when."""

    instances: ClassVar[list[FakeProducer]] = []
    send_cost_s: ClassVar[float] = 0.007

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.sent: list[tuple[float, str, bytes, dict[str, str], bytes]] = []
        self.started = self.stopped = False
        FakeProducer.instances.append(self)

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    async def send(self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        self.sent.append((loop.time(), topic, key, {k: v.decode() for k, v in headers}, value))
        if isinstance(loop, virtual_time.VirtualTimeLoop):
            loop.advance(self.send_cost_s)  # a send that takes time: pacing must not drift by it
        future: asyncio.Future[Any] = loop.create_future()
        future.set_result(None)
        return future


@pytest.fixture
def fake_producer(monkeypatch: pytest.MonkeyPatch) -> type[FakeProducer]:
    FakeProducer.instances = []
    monkeypatch.setattr(aiokafka, "AIOKafkaProducer", FakeProducer)
    return FakeProducer


async def test_produce_audio_fast(fake_producer: type[FakeProducer]) -> None:
    progress: list[tuple[float, float]] = []
    pcm = bytes(2 * 16000)
    n = await produce_audio(
        "k:1",
        "stt.audio",
        "call-1",
        pcm,
        encoding="pcm_s16le",
        sample_rate=16000,
        realtime=False,
        progress=lambda done, total: progress.append((done, total)),
    )
    producer = fake_producer.instances[0]
    assert producer.config["enable_idempotence"] is True
    assert producer.config["acks"] == "all"
    assert producer.config["bootstrap_servers"] == "k:1"
    assert producer.started and producer.stopped
    assert n == len(producer.sent) == 11
    assert {(topic, key) for _, topic, key, _, _ in producer.sent} == {("stt.audio", b"call-1")}
    assert [h["seq"] for _, _, _, h, _ in producer.sent] == [str(i) for i in range(11)]
    assert producer.sent[-1][3]["type"] == "end"
    assert progress[-1] == pytest.approx((1.0, 1.0))
    assert len(progress) == 10


def test_produce_audio_realtime_uses_an_absolute_clock(fake_producer: type[FakeProducer]) -> None:
    pcm = bytes(2 * 16000 // 2)  # 0.5 s
    virtual_time.run(produce_audio("k:1", "t", "s", pcm, encoding="pcm_s16le", sample_rate=16000, chunk_ms=50))
    times = [t for t, *_ in fake_producer.instances[0].sent]
    t0 = times[0]
    offsets = [t - t0 for t in times]
    expected = [0.05 * k for k in range(10)] + [0.5]
    assert offsets == pytest.approx(expected, abs=1e-9)


def test_produce_audio_stop_still_ends_the_session(fake_producer: type[FakeProducer]) -> None:
    async def main() -> int:
        stop = asyncio.Event()
        pcm = bytes(2 * 16000 * 5)
        asyncio.get_running_loop().call_later(0.12, stop.set)
        return await produce_audio("k:1", "t", "s", pcm, encoding="pcm_s16le", sample_rate=16000, stop=stop)

    n = virtual_time.run(main())
    sent = fake_producer.instances[0].sent
    assert n == len(sent) == 3
    assert [h["type"] for _, _, _, h, _ in sent] == ["audio", "audio", "end"]
    assert [h["seq"] for _, _, _, h, _ in sent] == ["0", "1", "2"]


async def test_produce_file_converts_and_reports(fake_producer: type[FakeProducer], tmp_path: Path) -> None:
    stereo = np.repeat(tone(0.3, 16000), 2)
    path = write_wav(tmp_path / "s.wav", encode(stereo, "pcm_s16le"), rate=16000, channels=2, width=2)
    log = io.StringIO()
    n = await produce_file(
        path,
        bootstrap="k:1",
        topic="stt.audio",
        session_id="call-9",
        encoding="pcm_mulaw",
        sample_rate=8000,
        realtime=False,
        show_progress=False,
        log=log,
    )
    sent = fake_producer.instances[0].sent
    assert n == len(sent) == 4
    assert {h["encoding"] for _, _, _, h, _ in sent[:-1]} == {"pcm_mulaw"}
    assert {(h["sample_rate"], h["channels"]) for _, _, _, h, _ in sent[:-1]} == {("8000", "1")}
    assert log.getvalue().startswith("call-9: sent 4 records (0.3 s of pcm_mulaw at 8000 Hz, 1 ch) to stt.audio")


async def test_missing_topic(fake_producer: type[FakeProducer], monkeypatch: pytest.MonkeyPatch) -> None:
    async def never(self: FakeProducer, topic: str) -> set[int]:
        await asyncio.Event().wait()
        return set()

    monkeypatch.setattr(FakeProducer, "partitions_for", never)
    with pytest.raises(TopicNotFound, match=r"'stt\.audio' does not exist"):
        await produce_audio(
            "k:1", "stt.audio", "s", bytes(320), encoding="pcm_s16le", sample_rate=16000, topic_timeout_s=0.05
        )
    assert fake_producer.instances[0].stopped
    assert fake_producer.instances[0].sent == []
