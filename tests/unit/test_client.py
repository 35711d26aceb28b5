"""Tests of pipeline.client's producing side without a broker: every record it publishes is one the
worker's own parser (:func:`pipeline.records.parse`) accepts, and wrong input raises before anything is sent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pipeline.client import AudioProducer
from pipeline.errors import ClientError, IllegalTransition, PipelineError
from pipeline.records import InputLimits, parse


class RecordingProducer:
    """Stands in for a started AIOKafkaProducer: keeps what is sent, delivers at once (or fails)."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.sent: list[tuple[str, bytes, list[tuple[str, bytes]], bytes]] = []
        self.fail = fail

    async def send(self, topic: str, value: bytes, key: bytes, headers: list[tuple[str, bytes]]) -> Any:
        self.sent.append((topic, key, headers, value))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail is None:
            future.set_result(None)
        else:
            future.set_exception(self.fail)
        return future


def parsed(producer: RecordingProducer) -> list[Any]:
    return [parse(key, headers, value) for _, key, headers, value in producer.sent]


async def test_a_session_publishes_what_the_worker_parses() -> None:
    raw = RecordingProducer()
    producer = AudioProducer(raw, topic="audio-t")
    session = producer.session(
        "call-1", encoding="pcm_s16le", sample_rate=16000, endpoint="manual", model="ink-2", language="de", channels=2
    )
    await session.send(bytes(3200))
    await session.send(b"")
    await session.finalize()
    await session.send(bytearray(400))
    await session.end()
    messages = parsed(raw)
    assert [m.type for m in messages] == ["audio", "finalize", "audio", "end"]
    assert [m.seq for m in messages] == [0, 1, 2, 3] and session.seq == 4
    assert {topic for topic, *_ in raw.sent} == {"audio-t"}
    assert {m.session_id for m in messages} == {"call-1"}
    fmt = messages[0].format
    assert (fmt.encoding, fmt.sample_rate, fmt.channels, fmt.endpoint, fmt.model, fmt.language) == (
        "pcm_s16le",
        16000,
        2,
        "manual",
        "ink-2",
        "de",
    )
    assert session.records_sent == 4 and session.audio_seconds_sent == pytest.approx(3600 / 4 / 16000)


async def test_long_audio_is_split_into_whole_sample_records() -> None:
    raw = RecordingProducer()
    session = AudioProducer(raw, topic="t", max_chunk_bytes=1000).session(
        "s", encoding="pcm_f32le", sample_rate=8000, channels=3
    )
    await session.send(bytes(12 * 250))
    messages = parsed(raw)
    assert [len(m.audio) for m in messages] == [996, 996, 996, 12]
    assert [m.seq for m in messages] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("encoding", "channels", "size"),
    [("pcm_s16le", 1, 3), ("pcm_s32le", 1, 6), ("pcm_f16le", 2, 2), ("pcm_mulaw", 3, 4)],
)
async def test_a_partial_sample_raises_before_anything_is_sent(encoding: Any, channels: int, size: int) -> None:
    raw = RecordingProducer()
    session = AudioProducer(raw, topic="t").session("s", encoding=encoding, sample_rate=16000, channels=channels)
    with pytest.raises(ClientError, match="not a whole number of"):
        await session.send(bytes(size))
    with pytest.raises(ClientError, match="must be bytes"):
        await session.send("text")  # type: ignore[arg-type]
    assert raw.sent == [] and session.seq == 0


@pytest.mark.parametrize(
    ("session_id", "options", "message"),
    [
        ("", {}, "non-empty"),
        ("x" * 257, {}, "oversized"),
        ("\ud800", {}, "not UTF-8"),
        ("s", {"encoding": "opus"}, "not one of"),
        ("s", {"sample_rate": 7999}, "outside 8000..48000"),
        ("s", {"sample_rate": 16000.0}, "must be an int"),
        ("s", {"channels": 9}, "outside 1..8"),
        ("s", {"endpoint": "semi"}, "auto or manual"),
        ("s", {"model": "m" * 1025}, "oversized"),
        ("s", {"first_seq": -1}, "first_seq"),
    ],
)
def test_a_session_the_worker_would_reject_is_refused(session_id: str, options: dict[str, Any], message: str) -> None:
    raw = RecordingProducer()
    kwargs: dict[str, Any] = {"encoding": "pcm_s16le", "sample_rate": 16000, **options}
    with pytest.raises(ClientError, match=message) as raised:
        AudioProducer(raw, topic="t").session(session_id, **kwargs)
    assert isinstance(raised.value, PipelineError)
    assert raw.sent == []


def test_the_key_limit_is_the_producers() -> None:
    producer = AudioProducer(RecordingProducer(), topic="t", limits=InputLimits(max_key_bytes=4))
    producer.session("abcd", encoding="pcm_s16le", sample_rate=16000)
    with pytest.raises(ClientError, match="oversized"):
        producer.session("abcde", encoding="pcm_s16le", sample_rate=16000)


async def test_nothing_after_end() -> None:
    raw = RecordingProducer()
    session = AudioProducer(raw, topic="t").session("s", encoding="pcm_alaw", sample_rate=8000, first_seq=7)
    await session.end()
    for call in (session.send(bytes(8)), session.finalize(), session.end()):
        with pytest.raises(IllegalTransition):
            await call
    assert [m.seq for m in parsed(raw)] == [7]
    assert session.state == "ended"


async def test_a_delivery_failure_surfaces() -> None:
    session = AudioProducer(RecordingProducer(fail=OSError("broker gone")), topic="t").session(
        "s", encoding="pcm_s16le", sample_rate=16000
    )
    await session.send(bytes(2))
    with pytest.raises(OSError, match="broker gone"):
        await session.send(bytes(2))
