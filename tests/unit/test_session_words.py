"""Word timestamps in session audio time: offset by the connection's replay start, silence fill taken out."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.contract import Checkpoint, TurnRecord
from pipeline.records import AudioFormat, InputMessage
from pipeline.schemas import validate
from pipeline.session import Resume, Session, SessionConfig

MANUAL = AudioFormat("pcm_s16le", 16000, endpoint="manual")
CHUNK = b"\1\0" * 1600  # 100 ms


def make(resume: Resume | None = None) -> Session:
    clock = itertools.count(1_700_000_000_000)
    return Session("s1", MANUAL, first_offset=0, config=SessionConfig(), wall_ms=lambda: next(clock), resume=resume)


def audio(seq: int) -> InputMessage:
    return InputMessage("s1", "audio", seq, CHUNK, MANUAL)


def finalize(seq: int) -> InputMessage:
    return InputMessage("s1", "finalize", seq)


def final(text: str, *words: tuple[str, float, float]) -> bytes:
    stamps = {"words": [w for w, _, _ in words], "start": [s for _, s, _ in words], "end": [e for _, _, e in words]}
    event = {"type": "transcript", "is_final": True, "text": text, "request_id": "r", "duration": 0.5}
    return orjson.dumps({**event, "language": "en", "words": [stamps]})


def turn_ends(session: Session) -> list[TurnRecord]:
    out = [o.record for o in session.take().outputs if o.topic == "turns"]
    for record in out:
        validate("turn", record.to_dict())
        assert TurnRecord.from_json(record.to_json()) == record
    return [r for r in out if isinstance(r, TurnRecord) and r.type == "turn.end"]


def times(record: TurnRecord) -> list[tuple[str, float, float]]:
    assert record.words is not None
    return [(w.word, w.start_ms, w.end_ms) for w in record.words]


def send_all(session: Session, t: float = 0.0, until: float = 3.0) -> None:
    while t <= until:
        session.poll(t, input_live=True)
        t += 0.05


def test_first_connection_words_are_session_times() -> None:
    session = make()
    for seq in range(3):
        session.accept(audio(seq), 0.0, offset=seq)
    session.accept(InputMessage("s1", "end", 3), 0.0, offset=3)
    send_all(session)
    session.on_message(final("Hi there", ("Hi", 0.1, 0.15), ("there", 0.2, 0.29)))
    session.on_message(b'{"type":"done","request_id":"r"}')
    session.on_closed(1000)
    (end,) = turn_ends(session)
    assert times(end) == [("Hi", 100.0, 150.0), ("there", 200.0, 290.0)]
    assert end.duration_ms == 500.0 and end.language == "en"
    assert end.to_dict()["words"][0] == {"word": "Hi", "start_ms": 100.0, "end_ms": 150.0}


@given(st.integers(1, 6), st.integers(0, 3), st.integers(0, 60))  # the word lies in the replayed audio
def test_after_a_reconnect_words_are_offset_by_the_replay_start(before: int, after: int, word_ms: int) -> None:
    session = make()
    seq = 0
    for _ in range(before):
        session.accept(audio(seq), 0.0, offset=seq)
        seq += 1
    session.accept(finalize(seq), 0.0, offset=seq)
    seq += 1
    for _ in range(after + 1):
        session.accept(audio(seq), 0.0, offset=seq)
        seq += 1
    send_all(session)
    session.on_message(final("Zero", ("Zero", 0.0, 0.05)))
    session.on_message(b'{"type":"flush_done","request_id":"r"}')  # turn 0 ends: replay starts after its finalize
    (first,) = turn_ends(session)
    assert times(first) == [("Zero", 0.0, 50.0)]
    session.on_closed(None)
    session.reconnect()
    send_all(session, 10.0, 13.0)
    session.on_message(final("One", ("One", word_ms / 1000, (word_ms + 40) / 1000)))
    (end,) = turn_ends(session)  # no finalize outstanding on the new connection: the final ends the turn
    assert times(end) == [("One", before * 100.0 + word_ms, before * 100.0 + word_ms + 40)]


def test_after_a_crash_resume_words_are_offset_by_the_checkpoint_audio() -> None:
    checkpoint = Checkpoint(
        session_id="s1", status="open", resume_offset=20, next_seq=5, next_turn=1, next_transcript_seq=1,
        next_input_seq=20, transcript="Zero", audio_ms=1234.5, close_offset=None, endpoint="manual",
        encoding="pcm_s16le", sample_rate=16000, channels=1, model=None, language=None, at=1,
    )  # fmt: skip
    session = make(Resume.from_checkpoint(checkpoint))
    session.accept(audio(20), 0.0, offset=20)
    send_all(session)
    session.on_message(final(" One", ("One", 0.01, 0.05)))
    (end,) = turn_ends(session)
    assert end.turn == 1 and times(end) == [("One", 1244.5, 1284.5)]


def test_silence_fill_is_taken_out_of_word_times() -> None:
    session = make()
    session.accept(audio(0), 0.0, offset=0)
    sent: list[Any] = session.poll(0.0, input_live=True)
    assert sent == [CHUNK]
    filled = [f for t in (0.5, 0.6, 0.7, 0.8) for f in session.poll(t, input_live=True)]
    assert filled and all(f == b"\0\0" * 1600 for f in filled)  # 100 ms frames of silence fill
    fill_ms = 100.0 * len(filled)
    session.accept(audio(1), 1.0, offset=1)
    send_all(session, 1.0, 2.0)
    # Connection time: 100 ms of audio, the fill, then the second chunk.
    inside = 100.0 + fill_ms / 2
    after = 100.0 + fill_ms + 30
    session.on_message(final("a b", ("a", 0.05, inside / 1000), ("b", after / 1000, (after + 20) / 1000)))
    (end,) = turn_ends(session)
    assert times(end) == [("a", 50.0, 100.0), ("b", 130.0, 150.0)]
    assert session.session_ms(after) == pytest.approx(130.0)
