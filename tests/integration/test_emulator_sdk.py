"""Conformance: the official `cartesia` SDK (a client no one here wrote) runs unmodified against the emulator."""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator
from typing import Any

import cartesia
import pytest
from cartesia import AsyncCartesia, Cartesia
from cartesia.types.shared import WordTimestamps
from cartesia.types.stt import STTManualFinalizeTranscriptResponse
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from pipeline.emulator.engines.tones import synthesize
from tests.support.emulator import EmulatorThread, running_emulator

SCRIPT = ["Hello there.", "How are you today?"]
EXPECTED = "Hello there. How are you today?"
# Word spans of synthesize(SCRIPT): 200 ms lead, 40 ms symbols, 80 ms word gaps, 1200 ms between turns.
EXPECTED_WORDS = [("Hello", 0.2, 0.4), ("there.", 0.48, 0.72), ("How", 1.92, 2.04), ("are", 2.12, 2.24)]


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorThread]:
    # Tests push audio faster than realtime to stay quick; the realtime budget has its own test.
    with running_emulator(overload_budget_ms=1e9) as emulator:
        yield emulator


def chunks(audio: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(audio), size):
        yield audio[start : start + size]


def test_sync_auto_endpoint_typed_events_and_drain(emu: EmulatorThread) -> None:
    audio = synthesize(SCRIPT, 16000, "pcm_s16le")
    client = Cartesia(api_key="any-key", base_url=emu.base_url)
    with client.stt.auto_finalize.websocket(encoding="pcm_s16le", model="ink-2", sample_rate=16000) as conn:
        for chunk in chunks(audio, 3200):
            conn.send_raw(chunk)
        conn.send({"type": "close"})
        events = list(conn)  # read until the server closes the socket
    types = [e.type for e in events]
    assert types[0] == "connected"
    assert types.count("turn.start") == types.count("turn.end") == 2
    ends = [e.transcript for e in events if e.type == "turn.end"]  # type: ignore[union-attr]
    assert ends == ["Hello there.", " How are you today?"]
    assert "".join(ends) == EXPECTED
    assert " ".join(t.strip() for t in ends) == EXPECTED  # strip() then re-joining is what breaks
    assert "".join(t.strip() for t in ends) != EXPECTED
    updates = [e.transcript for e in events if e.type == "turn.update"]  # type: ignore[union-attr]
    assert updates[:2] == ["Hello", "Hello there."]  # cumulative, never deltas
    assert len({e.request_id for e in events}) == 1  # type: ignore[union-attr]


async def test_async_auto_endpoint_concurrent_send_and_receive(emu: EmulatorThread) -> None:
    audio = synthesize(SCRIPT, 8000, "pcm_mulaw")
    client = AsyncCartesia(api_key="k", base_url=emu.base_url)
    got: list[Any] = []
    async with client.stt.auto_finalize.websocket(encoding="pcm_mulaw", model="ink-2", sample_rate=8000) as conn:
        for chunk in chunks(audio, 800):
            await conn.send_raw(chunk)
        await conn.send({"type": "close"})
        async for event in conn:
            got.append(event)
    assert "".join(e.transcript for e in got if e.type == "turn.end") == EXPECTED


def test_sync_manual_endpoint_finalize_deltas_and_done(emu: EmulatorThread) -> None:
    audio = synthesize(SCRIPT, 16000, "pcm_f32le")
    half = len(audio) // 2 // 4 * 4
    client = Cartesia(api_key="k", base_url=emu.base_url)
    with client.stt.manual_finalize.websocket(encoding="pcm_f32le", model="ink-whisper", sample_rate=16000) as conn:
        conn.send_raw(audio[:half])
        conn.send("finalize")
        conn.send_raw(audio[half:])
        conn.send("finalize")
        conn.send("close")  # several commands before reading: the server must queue its events
        events = list(conn)
    finals = [e.text for e in events if e.type == "transcript" and e.is_final]  # type: ignore[union-attr]
    assert "".join(finals) == EXPECTED
    assert [e.type for e in events].count("flush_done") == 2
    assert events[-1].type == "done"


async def test_async_manual_endpoint(emu: EmulatorThread) -> None:
    audio = synthesize("Inserting words", 24000, "pcm_s32le")
    client = AsyncCartesia(api_key="k", base_url=emu.base_url)
    async with client.stt.manual_finalize.websocket(encoding="pcm_s32le", model="ink-2", sample_rate=24000) as conn:
        await conn.send_raw(audio)
        await conn.send("close")
        events = [event async for event in conn]
    assert "".join(e.text for e in events if e.type == "transcript" and e.is_final) == "Inserting words"
    assert events[-1].type == "done"


def test_sdk_parses_manual_word_timestamps_duration_and_language(emu: EmulatorThread) -> None:
    audio = synthesize(SCRIPT, 16000, "pcm_s16le")
    client = Cartesia(api_key="k", base_url=emu.base_url)
    with client.stt.manual_finalize.websocket(
        encoding="pcm_s16le", model="ink-whisper", sample_rate=16000, language="en"
    ) as conn:
        conn.send_raw(audio)
        conn.send("finalize")
        conn.send("close")
        events = list(conn)
    finals = [e for e in events if isinstance(e, STTManualFinalizeTranscriptResponse) and e.is_final]
    assert "".join(e.text for e in finals) == EXPECTED
    stamps = [w for e in finals for w in e.words or []]
    assert stamps and all(isinstance(w, WordTimestamps) for w in stamps)
    assert [word for w in stamps for word in w.words] == EXPECTED.split()
    starts = [t for w in stamps for t in w.start]
    ends = [t for w in stamps for t in w.end]
    got = zip([x for w in stamps for x in w.words], starts, ends, strict=True)
    for (word, start, end), (text, at, until) in zip(got, EXPECTED_WORDS, strict=False):
        assert (word, start, end) == (text, pytest.approx(at, abs=0.005), pytest.approx(until, abs=0.005))
    assert all(s < e for s, e in zip(starts, ends, strict=True)) and starts == sorted(starts)
    assert all(e.language == "en" and e.duration is not None and e.duration > 0 for e in finals)


def test_sdk_400_invalid_model_is_an_error_event_then_close(emu: EmulatorThread) -> None:
    client = Cartesia(api_key="k", base_url=emu.base_url)
    with client.stt.auto_finalize.websocket(
        encoding="pcm_s16le",
        model="ink-whisper",  # not valid on the auto endpoint
        sample_rate=16000,
    ) as conn:
        event = conn.recv()
        assert event.type == "error"
        assert event.status_code == 400  # type: ignore[union-attr]
        assert event.error_code == "model_not_found"  # type: ignore[union-attr]
        assert event.title and event.message  # type: ignore[union-attr]
        with pytest.raises(ConnectionClosedError) as closed:
            conn.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_sdk_401_wrong_or_missing_key() -> None:
    with running_emulator(api_keys=("good-key",)) as emu:
        for key in ("bad-key", ""):
            client = Cartesia(api_key=key or "x", base_url=emu.base_url)
            headers = {"Authorization": ""} if not key else {}
            with pytest.raises(InvalidStatus) as refused:  # noqa: SIM117
                with client.stt.auto_finalize.websocket(
                    encoding="pcm_s16le", model="ink-2", sample_rate=16000, extra_headers=headers
                ):
                    pass
            assert refused.value.response.status_code == 401
        good = Cartesia(api_key="good-key", base_url=emu.base_url)
        with good.stt.auto_finalize.websocket(encoding="pcm_s16le", model="ink-2", sample_rate=16000) as conn:
            assert conn.recv().type == "connected"


def test_sdk_429_concurrency_limited() -> None:
    with running_emulator(max_sessions=1) as emu:
        client = Cartesia(api_key="k", base_url=emu.base_url)
        with client.stt.auto_finalize.websocket(encoding="pcm_s16le", model="ink-2", sample_rate=16000) as first:
            assert first.recv().type == "connected"
            with pytest.raises(InvalidStatus) as refused:  # noqa: SIM117
                with client.stt.manual_finalize.websocket(encoding="pcm_s16le", model="ink-2", sample_rate=16000):
                    pass
            assert refused.value.response.status_code == 429
            assert b"concurrency_limited" in refused.value.response.body
            first.send({"type": "close"})
            list(first)


# -- batch `POST /stt` ---------------------------------------------------------------------------


def wav_file(audio: bytes, rate: int = 16000, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(audio)
    return buf.getvalue()




def test_sync_batch_transcribe_wav_with_word_timestamps(emu: EmulatorThread) -> None:
    audio = synthesize(SCRIPT, 16000, "pcm_s16le")
    client = Cartesia(api_key="k", base_url=emu.base_url)
    result = client.stt.transcribe(
        file=("speech.wav", wav_file(audio), "audio/wav"),
        model="ink-whisper",
        language="en",
        timestamp_granularities=["word"],
    )
    assert result.type == "transcript" and result.text == EXPECTED
    assert result.language == "en" and result.request_id
    assert result.duration == pytest.approx(len(audio) / 32000, abs=0.001)
    assert result.words is not None
    assert [w.word for w in result.words] == EXPECTED.split()
    for word, (text, start, end) in zip(result.words, EXPECTED_WORDS, strict=False):
        assert word.word == text
        assert word.start == pytest.approx(start, abs=0.005) and word.end == pytest.approx(end, abs=0.005)


async def test_async_batch_transcribe_raw_pcm_with_query_encoding(emu: EmulatorThread) -> None:
    audio = synthesize(SCRIPT, 8000, "pcm_mulaw")
    client = AsyncCartesia(api_key="k", base_url=emu.base_url)
    result = await client.stt.transcribe(
        file=("speech.raw", audio), model="ink-whisper-2025-06-04", encoding="pcm_mulaw", sample_rate=8000
    )
    assert result.text == EXPECTED and result.words is None  # words only when asked for
    stereo = synthesize(SCRIPT, 24000, "pcm_s16le")
    interleaved = bytes(b for i in range(0, len(stereo), 2) for b in stereo[i : i + 2] * 2)
    both = await client.stt.transcribe(file=("s.wav", wav_file(interleaved, 24000, 2)), model="ink-whisper")
    assert both.text == EXPECTED


def test_batch_errors_are_the_sockets_errors() -> None:
    audio = wav_file(synthesize("Hi", 16000, "pcm_s16le"))
    with running_emulator(api_keys=("good-key",)) as emu:
        with pytest.raises(cartesia.AuthenticationError) as refused:
            Cartesia(api_key="bad-key", base_url=emu.base_url).stt.transcribe(
                file=("a.wav", audio), model="ink-whisper"
            )
        assert refused.value.status_code == 401
        client = Cartesia(api_key="good-key", base_url=emu.base_url)
        with pytest.raises(cartesia.BadRequestError) as bad:
            client.stt.transcribe(file=("a.wav", audio), model="ink-2")  # type: ignore[arg-type]
        assert bad.value.status_code == 400
        assert isinstance(bad.value.body, dict) and bad.value.body["error_code"] == "model_not_found"
        assert bad.value.body["doc_url"].startswith("https://docs.cartesia.ai/")
        with pytest.raises(cartesia.BadRequestError):
            client.stt.transcribe(file=("a.mp3", b"ID3 not audio we decode"), model="ink-whisper")
        assert client.stt.transcribe(file=("a.wav", audio), model="ink-whisper").text == "Hi"
