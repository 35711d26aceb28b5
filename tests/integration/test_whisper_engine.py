"""The `whisper` engine on real speech: espeak-ng synthesizes it, the bundled tiny.en model recognizes it.

Needs the `asr` extra and espeak-ng (``infra/install-espeak.sh``); a missing espeak-ng fails, never skips.

The sentences were picked because tiny.en recognizes espeak's robotic voice reliably for them even at
8 kHz; fricative-heavy ones ("The quick brown fox...") lose too much of it in narrowband audio.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soxr
from numpy.typing import NDArray

from pipeline.emulator.engines.base import EngineEvent, SpeechEnd, SpeechStart, Text
from pipeline.emulator.engines.whisper import WhisperEngine

pytestmark = pytest.mark.asr

SENTENCES = ("Open the door and turn on the light.", "We will meet again on Monday.")
LEAD_S = 0.7
GAP_S = 1.5
TAIL_S = 1.0
TIME_TOLERANCE_MS = 300.0
MAX_WER = 0.25
ESPEAK_RATE = 22_050


@dataclass(frozen=True)
class Speech:
    """The synthesized test audio and where its sentences are audible."""

    samples: NDArray[np.float32]
    sample_rate: int
    spans_ms: list[tuple[float, float]]


def words(text: str) -> list[str]:
    """Lower-cased words without punctuation."""
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_error_rate(reference: list[str], hypothesis: list[str]) -> float:
    """(substitutions + deletions + insertions) / reference length, by Levenshtein distance over words."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
        previous = current
    return previous[-1] / len(reference)


def test_word_error_rate() -> None:
    assert word_error_rate(["a", "b", "c"], ["a", "b", "c"]) == 0.0
    assert word_error_rate(["a", "b", "c"], ["a", "x", "c"]) == pytest.approx(1 / 3)
    assert word_error_rate(["a", "b", "c"], ["a", "c"]) == pytest.approx(1 / 3)
    assert word_error_rate(["a", "b"], ["a", "b", "c", "d"]) == 1.0
    assert word_error_rate(["a", "b", "c", "d"], ["b", "a", "c", "d"]) == 0.5


def synthesize(text: str, path: Path) -> tuple[NDArray[np.float32], int]:
    """Speak ``text`` with espeak-ng into a WAV file and read it back with the stdlib."""
    assert shutil.which("espeak-ng"), "espeak-ng is missing: run infra/install-espeak.sh"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 1
        assert wav.getsampwidth() == 2
        rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return (pcm.astype(np.float32) / 32768.0), rate


def audible_span_ms(samples: NDArray[np.float32], rate: int, offset: int) -> tuple[float, float]:
    loud = np.flatnonzero(np.abs(samples) > 0.02)
    assert loud.size, "espeak-ng produced silence"
    return (offset + loud[0]) * 1000 / rate, (offset + loud[-1] + 1) * 1000 / rate


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    """LEAD_S of silence, then two sentences separated by GAP_S of silence, then TAIL_S of silence."""
    directory = tmp_path_factory.mktemp("espeak")
    rate = ESPEAK_RATE
    parts = [np.zeros(int(LEAD_S * rate), dtype=np.float32)]
    spans: list[tuple[float, float]] = []
    offset = parts[0].size
    for index, sentence in enumerate(SENTENCES):
        samples, rate = synthesize(sentence, directory / f"sentence{index}.wav")
        spans.append(audible_span_ms(samples, rate, offset))
        silence = np.zeros(int((GAP_S if index < len(SENTENCES) - 1 else TAIL_S) * rate), dtype=np.float32)
        parts += [samples, silence]
        offset += samples.size + silence.size
    assert rate == ESPEAK_RATE
    return Speech(np.concatenate(parts), rate, spans)


@pytest.fixture(scope="module")
def engine() -> WhisperEngine:
    engine = WhisperEngine()
    engine.load()
    return engine


def resampled(speech: Speech, rate: int) -> NDArray[np.float32]:
    if rate == speech.sample_rate:
        return speech.samples
    return np.asarray(soxr.resample(speech.samples, speech.sample_rate, rate), dtype=np.float32)


def feed_in_chunks(engine: WhisperEngine, samples: NDArray[np.float32], rate: int) -> list[EngineEvent]:
    """Feed 100 ms chunks, then flush."""
    recognizer = engine.recognizer(rate)
    chunk = rate // 10
    events: list[EngineEvent] = []
    for start in range(0, samples.size, chunk):
        events += recognizer.feed(samples[start : start + chunk])
    events += recognizer.flush()
    return events


@pytest.mark.parametrize("rate", [ESPEAK_RATE, 16_000, 8_000])
def test_two_sentences(engine: WhisperEngine, speech: Speech, rate: int) -> None:
    events = feed_in_chunks(engine, resampled(speech, rate), rate)

    times = [event.at_ms for event in events]
    assert times == sorted(times), events
    starts = [event.at_ms for event in events if isinstance(event, SpeechStart)]
    ends = [event.at_ms for event in events if isinstance(event, SpeechEnd)]
    texts = [event for event in events if isinstance(event, Text)]
    assert len(starts) == len(ends) == len(SENTENCES), events
    for (start, end), (expected_start, expected_end) in zip(
        zip(starts, ends, strict=True), speech.spans_ms, strict=True
    ):
        assert start == pytest.approx(expected_start, abs=TIME_TOLERANCE_MS), events
        assert end == pytest.approx(expected_end, abs=TIME_TOLERANCE_MS), events
    kinds = [type(event) for event in events]
    assert kinds == [SpeechStart, SpeechEnd, Text] * len(SENTENCES), events

    assert not texts[0].text[0].isspace(), texts
    assert texts[1].text.startswith(" ") and not texts[1].text[1].isspace(), texts
    hypothesis = words("".join(text.text for text in texts))
    reference = words(" ".join(SENTENCES))
    assert word_error_rate(reference, hypothesis) <= MAX_WER, (reference, hypothesis)


def test_flush_mid_speech_transcribes_what_was_heard(engine: WhisperEngine, speech: Speech) -> None:
    """Speech from the connection's first sample, cut as the sentence ends: flush must not wait."""
    begin, end = (int(ms / 1000 * speech.sample_rate) for ms in speech.spans_ms[0])
    recognizer = engine.recognizer(speech.sample_rate)
    events = recognizer.feed(speech.samples[begin:end])
    assert [type(event) for event in events] == [SpeechStart]

    flushed = recognizer.flush()
    assert [type(event) for event in flushed] == [SpeechEnd, Text], flushed
    assert isinstance(flushed[1], Text)
    assert word_error_rate(words(SENTENCES[0]), words(flushed[1].text)) <= MAX_WER, flushed
    assert recognizer.flush() == []


@pytest.mark.parametrize("noise_dbfs", [None, -60.0, -40.0])
def test_silence_yields_no_events(engine: WhisperEngine, noise_dbfs: float | None) -> None:
    """Digital silence, then (optionally) a steady noise floor that starts abruptly."""
    rate = 16_000
    chunk = rate // 10
    recognizer = engine.recognizer(rate)
    rng = np.random.default_rng(7)
    events: list[EngineEvent] = []
    for index in range(60):
        samples = np.zeros(chunk, dtype=np.float32)
        if noise_dbfs is not None and index >= 20:
            samples = (rng.standard_normal(chunk) * 10 ** (noise_dbfs / 20)).astype(np.float32)
        events += recognizer.feed(samples)
    events += recognizer.flush()
    assert events == []


def test_long_speech_is_transcribed_in_pieces(tmp_path: Path) -> None:
    """Speech that outgrows the segment limit is cut (at a pause) and transcribed while it goes on."""
    paragraph = " ".join((*SENTENCES, "My name is John and I live in London.", "Please call me back tomorrow morning."))
    samples, rate = synthesize(paragraph, tmp_path / "paragraph.wav")
    assert samples.size / rate > 7.0
    engine = WhisperEngine(end_silence_ms=1500, max_segment_s=6.0)
    tail = np.zeros(2 * rate, dtype=np.float32)
    events = feed_in_chunks(engine, np.concatenate((samples, tail)), rate)

    kinds = [type(event) for event in events]
    assert kinds[0] is SpeechStart and kinds.count(SpeechStart) == 1 and kinds.count(SpeechEnd) == 1, events
    end = kinds.index(SpeechEnd)
    assert Text in kinds[:end] and kinds[end + 1 :] == [Text], events
    texts = [event.text for event in events if isinstance(event, Text)]
    assert all(text.startswith(" ") for text in texts[1:]), texts
    assert word_error_rate(words(paragraph), words("".join(texts))) <= MAX_WER, texts
