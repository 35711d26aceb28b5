"""Word timing in the emulator (`pipeline.emulator.words`) and the batch endpoint's `words`."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray

from pipeline.emulator.batch import BatchRequest, transcribe
from pipeline.emulator.engines.base import EngineEvent, SpeechEnd, SpeechStart, Text
from pipeline.emulator.words import WordTimer


class SegmentEngine:
    """An engine answering in the whisper engine's order: a segment ends, then its text arrives."""

    name = "segments"

    def __init__(self, events: list[EngineEvent]) -> None:
        self._events = events

    def recognizer(self, sample_rate: int) -> SegmentEngine:
        return self

    def feed(self, samples: NDArray[np.float32]) -> list[EngineEvent]:
        return list(self._events)

    def flush(self) -> list[EngineEvent]:
        return []


def test_batch_words_of_text_that_follows_its_segment() -> None:
    # Seen failing before the WordTimer: text after SpeechEnd got no words at all.
    engine = SegmentEngine([SpeechStart(100), SpeechEnd(500), Text("Hi all", 530), SpeechStart(900), Text(" ok", 950)])
    request = BatchRequest(np.zeros(16000, dtype=np.float32), 16000, "ink-whisper", "en", word_timestamps=True)
    response = transcribe(engine, request, "r")
    assert response["text"] == "Hi all ok"
    assert response["words"] == [
        {"word": "Hi", "start": 0.1, "end": 0.26},  # the segment's 400 ms shared 2:3
        {"word": "all", "start": 0.26, "end": 0.5},
        {"word": "ok", "start": 0.9, "end": 0.95},  # an unfinished span ends at the last event
    ]


spans = st.lists(
    st.tuples(
        st.integers(0, 500),  # gap before the span
        st.integers(1, 800),  # span length
        st.lists(st.text("abc", min_size=1, max_size=5), min_size=0, max_size=4),  # its words
        st.booleans(),  # text inside the span (tones) or right after it (whisper)
    ),
    max_size=8,
)


@given(spans, st.data())
def test_every_token_is_timed_once_in_order_within_its_span(
    items: list[tuple[int, int, list[str], bool]], data: st.DataObject
) -> None:
    timer = WordTimer()
    t = 0.0
    expected: list[tuple[str, float, float]] = []
    taken: list[tuple[str, float, float]] = []
    for gap, length, tokens, inside in items:
        start, end = t + gap, t + gap + length
        text = "".join((" " if expected or i else "") + w for i, w in enumerate(tokens))
        events: list[EngineEvent] = [SpeechStart(start)]
        events += [Text(text, end - 0.5), SpeechEnd(end)] if inside else [SpeechEnd(end), Text(text, end + 1)]
        expected += [(w, start, end) for w in tokens]
        for event in events:
            timer.feed([event])
            if data.draw(st.booleans()):
                taken += [(w.word, w.start_ms, w.end_ms) for w in timer.take()]
        t = end
    taken += [(w.word, w.start_ms, w.end_ms) for w in timer.take()]
    assert [w for w, _, _ in taken] == [w for w, _, _ in expected]
    for (_, start, end), (_, lo, hi) in zip(taken, expected, strict=True):
        assert lo - 1e-9 <= start <= end <= hi + 1e-9
    assert [s for _, s, _ in taken] == sorted(s for _, s, _ in taken)


def test_cut_times_a_partial_word_and_continues_the_span() -> None:
    timer = WordTimer()
    timer.feed([SpeechStart(100), Text("Insert", 300)])
    timer.cut(400)
    assert [(w.word, w.start_ms, w.end_ms) for w in timer.take()] == [("Insert", 100, 400)]
    timer.cut(450)  # nothing new to time: the continuation still starts at the first cut
    assert timer.take() == []
    timer.feed([Text("ing", 460), SpeechEnd(500)])
    assert [(w.word, w.start_ms, w.end_ms) for w in timer.take()] == [("ing", 400, 500)]
