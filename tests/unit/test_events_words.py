"""Manual-endpoint word timestamps, duration and language through :class:`ManualNormalizer`."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.contract import WordTiming
from pipeline.events import ManualNormalizer, TurnEvent, parse_words


def transcript(text: str, final: bool, **extra: Any) -> dict[str, Any]:
    return {"type": "transcript", "is_final": final, "text": text, "request_id": "r", **extra}


def sdk_words(*words: tuple[str, float, float]) -> list[dict[str, Any]]:
    """The SDK 4.2 shape: one WordTimestamps object with parallel lists."""
    return [{"words": [w for w, _, _ in words], "start": [s for _, s, _ in words], "end": [e for _, _, e in words]}]


def timings(event: TurnEvent) -> list[tuple[str, float, float]]:
    assert event.words is not None
    return [(w.word, w.start_ms, w.end_ms) for w in event.words]


def test_both_published_shapes_read_the_same() -> None:
    sdk = sdk_words(("How", 0.0, 0.12), ("are", 0.2, 0.31))
    docs = [{"word": "How", "start": 0, "end": 0.12}, {"word": "are", "start": 0.2, "end": 0.31}]
    expected = [WordTiming("How", 0.0, 120.0), WordTiming("are", 200.0, 310.0)]
    assert parse_words(sdk) == parse_words(docs) == expected
    assert parse_words([]) == [] and parse_words([{"words": [], "start": [], "end": []}]) == []


@pytest.mark.parametrize(
    "bad",
    [
        "How",
        [{"words": ["How"], "start": [0.0], "end": []}],  # lists of different lengths
        [{"words": ["How"], "start": [0.5], "end": [0.2]}],  # ends before it starts
        [{"word": "How", "start": -1, "end": 0.2}],
        [{"word": "", "start": 0, "end": 0.2}],
        [{"word": "How", "start": float("nan"), "end": 0.2}],
        [{"word": "How", "start": True, "end": 0.2}],
        ["How"],
    ],
)
def test_unreadable_words_are_an_anomaly_and_the_turn_goes_on(bad: object) -> None:
    n = ManualNormalizer()
    assert parse_words(bad) is None
    out = n.feed(transcript("How", True, words=bad))
    assert [e.type for e in out] == ["turn.start", "turn.update", "turn.end"]
    assert out[-1].transcript == "How" and out[-1].words is None
    assert n.anomalies["bad_words"] == 1


def test_turn_events_carry_finals_then_interim_words_duration_and_language() -> None:
    n = ManualNormalizer()
    n.finalize_sent()
    n.feed(transcript("Hello", False, words=sdk_words(("Hello", 0.1, 0.3)), duration=0.4, language="en"))
    confirmed = transcript("Hello", True, words=sdk_words(("Hello", 0.1, 0.3)), duration=0.5, language="en")
    assert n.feed(confirmed) == []  # the visible text did not change
    (update,) = n.feed(transcript(" world", False, words=sdk_words(("world", 0.38, 0.6)), duration=0.3))
    assert update.transcript == "Hello world"
    assert timings(update) == [("Hello", 100.0, 300.0), ("world", 380.0, 600.0)]
    assert update.duration_ms == 800.0 and update.language == "en"  # the final's 0.5 s + the interim's 0.3 s
    n.feed(transcript(" world", True, words=sdk_words(("world", 0.38, 0.6)), duration=0.35, language="fr"))
    (end,) = n.feed({"type": "flush_done", "request_id": "r"})
    assert end.type == "turn.end" and end.transcript == "Hello world"
    assert timings(end) == [("Hello", 100.0, 300.0), ("world", 380.0, 600.0)]
    assert end.duration_ms == 850.0 and end.language == "fr"  # the finals' 0.5 s + 0.35 s; the latest language
    # The next turn starts clean.
    out = n.feed(transcript("Next", True))
    assert [e.type for e in out] == ["turn.start", "turn.update", "turn.end"]
    assert all(e.words is None and e.duration_ms is None and e.language is None for e in out)


def test_a_final_that_confirms_the_interim_emits_no_update_but_ends_with_its_words() -> None:
    n = ManualNormalizer()
    n.feed(transcript("Hi", False, words=sdk_words(("Hi", 0.1, 0.2))))
    out = n.feed(transcript("Hi", True, words=sdk_words(("Hi", 0.1, 0.25))))
    assert [e.type for e in out] == ["turn.end"]
    assert timings(out[0]) == [("Hi", 100.0, 250.0)]


chunks = st.lists(
    st.lists(st.tuples(st.sampled_from(["a", "bc", "def"]), st.integers(0, 50)), max_size=4), min_size=1, max_size=6
)


@given(chunks)
def test_turn_end_words_are_every_final_chunks_words_in_order(chunks: list[list[tuple[str, int]]]) -> None:
    n = ManualNormalizer()
    n.finalize_sent()
    t = 0
    expected: list[tuple[str, float, float]] = []
    for chunk in chunks:
        stamps: list[tuple[str, float, float]] = []
        for word, gap in chunk:
            stamps.append((word, (t + gap) / 1000, (t + gap + 100) / 1000))
            expected.append((word, float(t + gap), float(t + gap + 100)))
            t += gap + 100
        n.feed(transcript(" ".join(w for w, _, _ in stamps) + " ", False, words=sdk_words(*stamps[:1])))
        n.feed(transcript("x" + " ".join(w for w, _, _ in stamps) + " ", True, words=sdk_words(*stamps)))
    (end,) = n.feed({"type": "flush_done"})
    assert end.type == "turn.end"
    assert timings(end) == expected  # ms, rounded to 0.001: exact for these times
