"""Tests of the tones engine: exact text round trips, streaming invariance, timing and garbling."""

from __future__ import annotations

import itertools
import string
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from pipeline.audio import ENCODINGS, Encoding, decode, encode, silence
from pipeline.emulator.engines.base import Engine, EngineEvent, SpeechEnd, SpeechStart, Text
from pipeline.emulator.engines.tones import (
    ALPHABET,
    SYMBOL_MS,
    TURN_PAUSE_MS,
    WORD_GAP_MS,
    Script,
    TonesEngine,
    TonesRecognizer,
    script_text,
    synthesize,
    synthesize_samples,
)

RATES = (8000, 11025, 16000, 22050, 24000, 44100, 48000)
SCRIPT = ["Hello, world!", 300, "It's 3:45 (ok?) #42 x=y+z", "\"Quote\" & 100% $5 @home ~/a_b*c;d"]

words = st.text(alphabet=ALPHABET, min_size=1, max_size=8)
texts = st.lists(words, min_size=1, max_size=8).map(" ".join)


def recognize(
    samples: NDArray[np.float32], rate: int, sizes: list[int] | None = None, flush_every: int = 0
) -> list[EngineEvent]:
    """Feed ``samples`` in chunks of ``sizes`` (cycled; all at once if None), flushing every n-th chunk."""
    recognizer = TonesRecognizer(rate)
    if sizes is None:
        return recognizer.feed(samples) + recognizer.flush()
    events: list[EngineEvent] = []
    i = k = 0
    while i < samples.size:
        n = sizes[k % len(sizes)]
        events += recognizer.feed(samples[i : i + n])
        i, k = i + n, k + 1
        if flush_every and k % flush_every == 0:
            events += recognizer.flush()
    return events + recognizer.flush()


def recognize_bytes(data: bytes, encoding: Encoding, rate: int) -> list[EngineEvent]:
    return recognize(decode(data, encoding), rate)


def text_of(events: list[EngineEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, Text))


def speech_spans(events: list[EngineEvent]) -> list[tuple[float, float]]:
    starts = [e.at_ms for e in events if isinstance(e, SpeechStart)]
    ends = [e.at_ms for e in events if isinstance(e, SpeechEnd)]
    assert len(starts) == len(ends)
    return list(zip(starts, ends, strict=True))


def test_alphabet() -> None:
    assert len(ALPHABET) == len(set(ALPHABET)) == 94
    assert set(ALPHABET) == set(string.printable) - set(string.whitespace)


def test_engine() -> None:
    engine: Engine = TonesEngine()
    assert engine.name == "tones"
    assert isinstance(engine.recognizer(16000), TonesRecognizer)


def test_script_text() -> None:
    assert script_text("Hello there.") == "Hello there."
    assert script_text(["Hello  there.", 500, " How are you? ", "", 20]) == "Hello there. How are you?"
    assert script_text([]) == ""
    assert script_text("a\tb\nc\u00a0d") == "a b c d"


@pytest.mark.parametrize("bad", ["héllo", "smile\U0001f642", ["ok", "naïve"]])
def test_synthesize_rejects_unknown_characters(bad: Script) -> None:
    with pytest.raises(ValueError, match="alphabet"):
        synthesize_samples(bad, 16000)


def test_synthesize_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="pause"):
        synthesize_samples(["a", -1, "b"], 16000)
    with pytest.raises(ValueError, match="sample rate"):
        synthesize_samples("a", 4000)
    with pytest.raises(ValueError, match="lead_ms"):
        synthesize_samples("a", 16000, lead_ms=-5)


def test_layout_durations() -> None:
    rate = 16000
    assert synthesize_samples("", rate, lead_ms=200, tail_ms=50).size == 4000
    one_word = 200 + 3 * SYMBOL_MS
    assert synthesize_samples("abc", rate).size == one_word * 16
    assert synthesize_samples("abc de", rate).size == (one_word + WORD_GAP_MS + 2 * SYMBOL_MS) * 16
    assert synthesize_samples(["abc", "de"], rate).size == (one_word + TURN_PAUSE_MS + 2 * SYMBOL_MS) * 16
    assert synthesize_samples(["abc", 500, "de", 70], rate).size == (one_word + 500 + 80 + 70) * 16
    assert synthesize_samples([100, "abc"], rate, lead_ms=0).size == (100 + 3 * SYMBOL_MS) * 16


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("rate", RATES)
def test_round_trip_every_encoding_and_rate(encoding: Encoding, rate: int) -> None:
    data = synthesize(SCRIPT, rate, encoding)
    assert text_of(recognize_bytes(data, encoding, rate)) == script_text(SCRIPT)


def test_whole_alphabet_round_trip() -> None:
    script = " ".join(ALPHABET[i : i + 10] for i in range(0, len(ALPHABET), 10))
    for rate, encoding in [(8000, "pcm_mulaw"), (8000, "pcm_alaw"), (48000, "pcm_f16le")]:
        data = synthesize(script, rate, encoding)  # type: ignore[arg-type]
        assert text_of(recognize_bytes(data, encoding, rate)) == script  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(text=texts, rate=st.sampled_from(RATES), encoding=st.sampled_from(ENCODINGS), lead_ms=st.integers(0, 50))
def test_random_text_round_trip(text: str, rate: int, encoding: Encoding, lead_ms: int) -> None:
    data = synthesize(text, rate, encoding, lead_ms=lead_ms)
    assert text_of(recognize_bytes(data, encoding, rate)) == text


@settings(max_examples=40, deadline=None)
@given(
    rate=st.sampled_from(RATES),
    sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=12),
    flush_every=st.integers(0, 5),
    tail_ms=st.integers(0, 200),
)
def test_chunking_and_flushing_invariance(rate: int, sizes: list[int], flush_every: int, tail_ms: int) -> None:
    samples = synthesize_samples(["Hi you.", 150, "Ok!"], rate, lead_ms=30, tail_ms=tail_ms)
    whole = recognize(samples, rate)
    assert recognize(samples, rate, sizes, flush_every) == whole
    assert text_of(whole) == "Hi you. Ok!"


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 2000), min_size=1, max_size=8))
def test_events_are_never_ahead_of_the_audio(sizes: list[int]) -> None:
    rate = 16000
    samples = synthesize_samples("ab cde", rate, tail_ms=100)
    recognizer = TonesRecognizer(rate)
    fed, i, k = 0, 0, 0
    last = 0.0
    while i < samples.size:
        chunk = samples[i : i + sizes[k % len(sizes)]]
        fed += chunk.size
        for event in recognizer.feed(chunk) + recognizer.flush():
            assert last <= event.at_ms <= fed * 1000 / rate
            last = event.at_ms
        i, k = i + chunk.size, k + 1


def test_per_character_events_and_leading_space() -> None:
    events = recognize(synthesize_samples(["ab cd", "e"], 16000, tail_ms=100), 16000)
    assert [e.text for e in events if isinstance(e, Text)] == ["a", "b", " c", "d", " e"]
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["SpeechStart", "Text", "Text", "SpeechEnd"] * 2 + ["SpeechStart", "Text", "SpeechEnd"]


def test_first_word_of_connection_has_no_space_even_after_silence() -> None:
    samples = np.concatenate((np.zeros(32000, np.float32), synthesize_samples("x y", 16000, tail_ms=100)))
    assert [e.text for e in recognize(samples, 16000) if isinstance(e, Text)] == ["x", " y"]


def test_flush_mid_word_cuts_at_complete_symbols() -> None:
    rate = 16000
    samples = synthesize_samples("Inserting", rate, lead_ms=200, tail_ms=100)
    recognizer = TonesRecognizer(rate)
    cut = (200 + 6 * SYMBOL_MS + 20) * rate // 1000  # halfway through the 7th symbol
    before = recognizer.feed(samples[:cut]) + recognizer.flush()
    assert text_of(before) == "Insert"
    assert not any(isinstance(e, SpeechEnd) for e in before)
    after = recognizer.feed(samples[cut:]) + recognizer.flush()
    assert text_of(after) == "ing"
    assert isinstance(after[-1], SpeechEnd)


def test_flush_ends_word_on_trailing_silence_only() -> None:
    rate = 16000
    samples = synthesize_samples("ab", rate, lead_ms=100, tail_ms=0)
    recognizer = TonesRecognizer(rate)
    events = recognizer.feed(samples) + recognizer.flush()
    assert not any(isinstance(e, SpeechEnd) for e in events), "no silence seen yet"
    events = recognizer.feed(np.zeros(rate // 100, np.float32)) + recognizer.flush()
    assert len(events) == 1 and isinstance(events[0], SpeechEnd)
    assert events[0].at_ms == pytest.approx(180, abs=2)
    assert recognizer.feed(np.zeros(rate, np.float32)) + recognizer.flush() == []


@pytest.mark.parametrize("rate", RATES)
def test_speech_timing_within_one_symbol(rate: int) -> None:
    events = recognize(synthesize_samples(["abc de", 400, "fgh"], rate, lead_ms=250, tail_ms=100), rate)
    truth = [(250, 370), (450, 530), (930, 1050)]
    spans = speech_spans(events)
    assert len(spans) == len(truth)
    for (start, end), (true_start, true_end) in zip(spans, truth, strict=True):
        assert abs(start - true_start) < SYMBOL_MS
        assert abs(end - true_end) < SYMBOL_MS
    for event in events:
        if isinstance(event, Text):
            assert any(s <= event.at_ms <= e for s, e in spans)


def test_pause_between_utterances() -> None:
    events = recognize(synthesize_samples(["Hello there.", 500, "How are you?"], 16000, tail_ms=100), 16000)
    assert text_of(events) == "Hello there. How are you?"
    spans = speech_spans(events)
    assert len(spans) == 5
    gaps = [nxt[0] - cur[1] for cur, nxt in itertools.pairwise(spans)]
    assert abs(gaps[1] - 500) <= SYMBOL_MS
    for gap in gaps[:1] + gaps[2:]:
        assert abs(gap - WORD_GAP_MS) <= SYMBOL_MS


def test_turn_pause_between_consecutive_utterances() -> None:
    spans = speech_spans(recognize(synthesize_samples(["One.", "Two."], 8000, tail_ms=100), 8000))
    assert len(spans) == 2
    assert abs(spans[1][0] - spans[0][1] - TURN_PAUSE_MS) <= SYMBOL_MS


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_silence_yields_no_events(encoding: Encoding) -> None:
    for rate in (8000, 48000):
        assert recognize_bytes(silence(encoding, 3 * rate), encoding, rate) == []
    assert recognize(np.zeros(0, np.float32), 16000) == []


@pytest.mark.parametrize(
    ("written", "declared"),
    [
        ("pcm_s16le", "pcm_mulaw"),
        ("pcm_f32le", "pcm_s16le"),
        ("pcm_s16le", "pcm_f16le"),
        ("pcm_mulaw", "pcm_alaw"),
        ("pcm_alaw", "pcm_mulaw"),
        ("pcm_s32le", "pcm_f32le"),
    ],
)
def test_wrong_encoding_garbles(written: Encoding, declared: Encoding) -> None:
    data = synthesize(SCRIPT, 16000, written, tail_ms=100)
    data = data[: len(data) - len(data) % 4]
    assert text_of(recognize_bytes(data, declared, 16000)) != script_text(SCRIPT)


@pytest.mark.parametrize(("actual", "declared"), [(16000, 8000), (8000, 16000), (48000, 44100), (24000, 16000)])
def test_wrong_rate_garbles(actual: int, declared: int) -> None:
    data = synthesize(SCRIPT, actual, "pcm_s16le", tail_ms=100)
    assert text_of(recognize_bytes(data, "pcm_s16le", declared)) != script_text(SCRIPT)


def test_noise_yields_no_text() -> None:
    noise = np.random.default_rng(7).uniform(-0.5, 0.5, 16000 * 5).astype(np.float32)
    assert text_of(recognize(noise, 16000)) == ""


def test_quiet_signal_is_silence() -> None:
    assert recognize(synthesize_samples("quiet", 16000) * np.float32(0.01), 16000) == []


def test_round_trip_survives_lossy_reencoding() -> None:
    samples = synthesize_samples(SCRIPT, 8000)
    mulaw = encode(samples, "pcm_mulaw")
    alaw = encode(decode(mulaw, "pcm_mulaw"), "pcm_alaw")
    assert text_of(recognize_bytes(alaw, "pcm_alaw", 8000)) == script_text(SCRIPT)


def test_memory_stays_bounded_on_endless_signal() -> None:
    rate = 48000
    recognizer = TonesRecognizer(rate)
    second = np.full(rate, -0.98, dtype=np.float32)  # what μ-law-declared s16 silence looks like
    recognizer.feed(second)
    tracemalloc.start()
    try:
        for _ in range(30):
            assert text_of(recognizer.feed(second)) == ""
        current, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current < 64 * 1024
