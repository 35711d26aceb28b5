"""The analytics arithmetic (pipeline.analytics.core): live sessions, minute counters, the replay guard."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.analytics import core
from pipeline.contract import DeadLetter, DeadLetterSource, ProviderErrorInfo, TranscriptRecord, TurnRecord

MINUTE = 1_767_225_600_000  # a minute boundary


def turn(kind: str, seq: int, at: int = MINUTE, **fields: object) -> TurnRecord:
    return TurnRecord("s1", seq, kind, "auto", None, float(seq * 100), at, **fields)  # type: ignore[arg-type]


def final(status: str = "complete", end_at: int | None = MINUTE + 900, at: int = MINUTE + 1000) -> TranscriptRecord:
    return TranscriptRecord("session", "s1", 2, 2, "Hi there you", status, 3500.0, at, end_at=end_at)  # type: ignore[arg-type]


LIFE = [
    turn("session.start", 0),
    turn("turn.start", 1, turn=0),
    turn("turn.update", 2, turn=0, transcript="Hi"),
    turn("turn.end", 3, turn=0, transcript="Hi"),
    turn("turn.start", 4, turn=1),
    turn("turn.eager_end", 5, turn=1, transcript=" there you"),
    turn(
        "session.error",
        6,
        error=ProviderErrorInfo(None, "Input gap", "expected seq 1, got 3", "seq_gap", False),
    ),
    turn("turn.end", 7, turn=1, transcript=" there you"),
    turn("session.end", 8, status="complete"),
]


def test_a_session_lifecycle() -> None:
    session = None
    states = []
    for record in LIFE:
        session = core.apply_turn(session, record)
        states.append(session["state"])
    assert session is not None
    assert states[:6] == ["listening", "speaking", "speaking", "listening", "speaking", "eager_end"]
    assert (session["status"], session["turns"], session["words"], session["errors"]) == (
        "complete",
        2,
        3,
        ["seq_gap"],
    )
    ended = core.apply_final(session, final())
    assert (ended["status"], ended["transcript"], ended["latency_ms"], ended["audio_s"]) == (
        "complete",
        "Hi there you",
        100,
        3.5,
    )


def test_the_final_status_wins_and_no_later_record_reopens_a_session() -> None:
    session = core.apply_final(None, final("truncated", end_at=None))
    assert session["status"] == "truncated" and session["latency_ms"] is None
    later = core.apply_turn(session, turn("turn.update", 9, turn=3, transcript="late"))
    assert later["status"] == "truncated" and later["state"] == "ended"


def test_functions_never_mutate_their_argument() -> None:
    session = core.apply_turn(None, LIFE[0])
    copy = dict(session)
    core.apply_turn(session, LIFE[3])
    core.apply_final(session, final())
    assert session == copy


def test_counts_of_each_record() -> None:
    assert core.turn_counts(LIFE[0]) == {core.SESSIONS_STARTED: 1}
    assert core.turn_counts(LIFE[7]) == {core.TURNS: 1, core.WORDS: 2}
    assert core.turn_counts(LIFE[6]) == {"errors.seq_gap": 1}
    assert core.turn_counts(LIFE[8]) == {"sessions_ended.complete": 1}
    assert core.turn_counts(LIFE[2]) == {}
    assert core.final_counts(final()) == {core.AUDIO_S: 3.5}
    letter = DeadLetter("bad_header", "x", None, DeadLetterSource("stt.audio", 0, 1, None), {}, "", 0, MINUTE)
    assert core.dead_letter_counts(letter) == {"dead_letters.bad_header": 1}


def test_the_guard_takes_each_offset_of_a_topic_once() -> None:
    value = core.applied(core.add(None, {"turns": 1}), "stt.turns", 7)
    assert not core.fresh(value, "stt.turns", 7) and not core.fresh(value, "stt.turns", 3)
    assert core.fresh(value, "stt.turns", 8) and core.fresh(value, "stt.transcripts", 0)
    assert core.fresh(None, "stt.turns", 0)


@given(st.lists(st.tuples(st.integers(0, 5 * 60_000), st.integers(0, 40)), max_size=60), st.integers(1, 10))
def test_windows_add_up_to_the_total(events: list[tuple[int, int]], minutes: int) -> None:
    windows: dict[int, core.Window] = {}
    for offset_ms, n in events:
        start = core.window_start(MINUTE + offset_ms)
        windows[start] = core.add(windows.get(start), {"words": n}, latency=n)
    now = MINUTE + 5 * 60_000
    out = core.stats(windows, now, minutes)
    assert len(out["minutes"]) == minutes
    assert sum(m["counts"].get("words", 0) for m in out["minutes"]) == out["total"]["counts"].get("words", 0)
    assert sum(m["latency_ms"]["n"] for m in out["minutes"]) == out["total"]["latency_ms"]["n"]


def test_percentiles_are_nearest_rank() -> None:
    assert core.percentile([], 0.5) is None
    assert core.percentile([5, 1, 3, 2, 4], 0.5) == 3
    assert core.percentile(list(range(1, 101)), 0.95) == 95


def test_the_guard_marker_is_not_a_counter() -> None:
    window = core.applied(core.add(None, {"turns": 2}, latency=10), "stt.turns", 4)
    out = core.stats({MINUTE: window}, MINUTE, 1)
    assert out["total"]["counts"] == {"turns": 2} and out["total"]["latency_ms"]["n"] == 1
