"""One session's state machine, driven by hand with an injected clock."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.contract import Checkpoint
from pipeline.errors import ProviderError
from pipeline.records import AudioFormat, InputMessage, Rejected
from pipeline.schemas import validate
from pipeline.session import Output, Resume, Session, SessionConfig

S16 = AudioFormat("pcm_s16le", 16000)
FRAME = 3200  # 100 ms of s16 at 16 kHz


def make(fmt: AudioFormat = S16, **config: float) -> Session:
    clock = itertools.count(1_700_000_000_000)
    return Session("s1", fmt, first_offset=0, config=SessionConfig(**config), wall_ms=lambda: next(clock))


def resumed_from(checkpoint: Checkpoint) -> Session:
    """The session as the next owner rebuilds it from its checkpoint."""
    return Session(
        "s1",
        S16,
        first_offset=checkpoint.resume_offset,
        config=SessionConfig(),
        wall_ms=lambda: 1,
        resume=Resume.from_checkpoint(checkpoint),
    )


def audio(seq: int, data: bytes, fmt: AudioFormat = S16) -> InputMessage:
    return InputMessage("s1", "audio", seq, data, fmt)


def control(seq: int, kind: str) -> InputMessage:
    return InputMessage("s1", kind, seq)  # type: ignore[arg-type]


def records(outputs: list[Output], topic: str = "turns") -> list[dict[str, Any]]:
    """The published form of the outputs of one topic."""
    return [o.record.to_dict() for o in outputs if o.topic == topic]


def drive(session: Session, until: float, step: float = 0.05, start: float = 0.0) -> list[bytes | str]:
    sent: list[bytes | str] = []
    t = start
    while t <= until:
        sent += session.poll(t, input_live=True)
        t += step
    return sent


def auto_events(*events: dict[str, object]) -> list[str]:
    return [orjson.dumps({"request_id": "r1", **e}).decode() for e in events]


def test_starts_with_session_start_record() -> None:
    session = make()
    (out,) = session.take().outputs
    assert out.topic == "turns" and out.key == "s1" and out.final
    assert out.record.type == "session.start" and out.record.seq == 0  # type: ignore[union-attr]
    validate("turn", out.record.to_dict())


def test_auto_session_full_lifecycle() -> None:
    session = make()
    session.take()
    assert session.accept(audio(0, b"\1\0" * 8000), 0.0)  # 500 ms
    assert session.accept(control(1, "end"), 0.0)
    assert session.phase == "draining"
    sent = drive(session, 1.0)
    assert b"".join(x for x in sent if isinstance(x, bytes)) == b"\1\0" * 8000
    assert sent[-1] == '{"type":"close"}' and session.phase == "closing"
    for message in auto_events(
        {"type": "connected"},
        {"type": "turn.start"},
        {"type": "turn.update", "transcript": "Hi"},
        {"type": "turn.end", "transcript": "Hi"},
        {"type": "turn.start"},
        {"type": "turn.end", "transcript": " there"},
    ):
        session.on_message(message)
    session.on_closed(1000)
    assert session.status == "complete" and session.ended
    outputs = session.take().outputs
    turns = records(outputs)
    assert [r["type"] for r in turns] == [
        "turn.start",
        "turn.update",
        "turn.end",
        "turn.start",
        "turn.end",
        "session.end",
    ]
    assert [r["seq"] for r in turns] == list(range(1, 7))
    transcripts = records(outputs, "transcripts")
    assert [(r["kind"], r["turn"], r["transcript"]) for r in transcripts] == [
        ("turn", 0, "Hi"),
        ("turn", 1, " there"),
        ("session", 2, "Hi there"),
    ]
    assert [r["seq"] for r in transcripts] == [0, 1, 2]
    for record in turns:
        validate("turn", record)
        assert record["request_id"] == "r1"
    for record in transcripts:
        validate("transcript", record)
    finals = {getattr(o.record, "type", None) or getattr(o.record, "kind", None) for o in outputs if o.final}
    assert finals == {"turn.end", "session.end", "turn", "session"}  # interim: turn.start, turn.update


def test_backlog_is_released_at_realtime() -> None:
    session = make(max_lead_ms=300)
    session.accept(audio(0, b"\0\1" * 16000 * 10), 0.0)  # 10 s pushed at once
    sent = session.poll(0.0, input_live=True)
    assert len(sent) <= 4  # the first frame plus at most 300 ms of lead
    total = sum(len(x) for x in drive(session, 5.0, start=0.05) + sent if isinstance(x, bytes))
    assert total <= (5.0 * 1000 + 300 + 100) * 32  # never ahead of realtime by more than the lead


def test_silence_fill_only_when_input_is_live() -> None:
    session = make(silence_budget_ms=400)
    session.accept(audio(0, b"\1\0" * 1600), 0.0)
    assert session.poll(0.0, input_live=True) == [b"\1\0" * 1600]
    assert session.poll(1.0, input_live=False) == []
    assert session.poll(2.0, input_live=True) == []  # the clock was rebased: the budget starts now
    filled = session.poll(2.5, input_live=True)
    assert filled and all(f == b"\0" * FRAME for f in filled)


def test_mulaw_silence_is_0xff() -> None:
    fmt = AudioFormat("pcm_mulaw", 8000)
    session = make(fmt)
    session.accept(audio(0, b"\x10" * 800, fmt), 0.0)
    session.poll(0.0, input_live=True)
    filled = session.poll(2.0, input_live=True)
    assert filled and set(b"".join(filled)) == {0xFF}  # type: ignore[arg-type]


def test_stereo_is_downmixed() -> None:
    fmt = AudioFormat("pcm_s16le", 16000, channels=2)
    session = make(fmt)
    left_right = (b"\x00\x10" + b"\x00\x20") * 1600
    session.accept(audio(0, left_right, fmt), 0.0)
    (frame,) = session.poll(0.0, input_live=True)
    assert frame == b"\x00\x18" * 1600


def test_manual_finalize_follows_exactly_the_audio_before_it() -> None:
    fmt = AudioFormat("pcm_s16le", 16000, endpoint="manual")
    session = make(fmt)
    session.accept(audio(0, b"\1\0" * 2000, fmt), 0.0)  # 125 ms: one frame + a partial
    session.accept(control(1, "finalize"), 0.0)
    session.accept(audio(2, b"\2\0" * 1600, fmt), 0.0)
    session.accept(control(3, "end"), 0.0)
    sent = drive(session, 1.0)
    assert sent == [b"\1\0" * 1600, b"\1\0" * 400, "finalize", b"\2\0" * 1600, "close"]


def test_finalize_on_auto_endpoint_is_ignored() -> None:
    session = make()
    session.accept(control(0, "finalize"), 0.0)
    session.accept(control(1, "end"), 0.0)
    assert drive(session, 0.2) == ['{"type":"close"}']


def test_duplicates_gaps_after_end_and_format_change() -> None:
    session = make()
    session.take()
    assert session.accept(audio(0, b"\0\0"), 0.0)
    assert not session.accept(audio(0, b"\0\0"), 0.0)
    assert session.duplicates == 1
    assert session.accept(audio(3, b"\0\0"), 0.0)
    (gap,) = records(session.take().outputs)
    assert gap["type"] == "session.error" and gap["error"]["error_code"] == "seq_gap"
    validate("turn", gap)
    with pytest.raises(Rejected) as changed:
        session.accept(audio(4, b"\0", AudioFormat("pcm_mulaw", 8000)), 0.0)
    assert changed.value.reason == "encoding_changed"
    session.accept(control(4, "end"), 0.0)  # the rejected chunk did not consume seq 4
    with pytest.raises(Rejected) as after:
        session.accept(audio(5, b"\0\0"), 0.0)
    assert after.value.reason == "after_end"
    assert not session.accept(audio(2, b"\0\0"), 0.0)  # an old duplicate is still only a duplicate


def test_provider_4xx_error_fails_the_session() -> None:
    session = make()
    session.take()
    session.on_message(
        orjson.dumps({"type": "error", "status_code": 400, "title": "t", "message": "m", "error_code": "x"})
    )
    assert session.status == "failed"
    out = session.take().outputs
    assert [r["type"] for r in records(out)] == ["session.error", "session.end"]
    assert records(out, "transcripts")[0]["status"] == "failed"
    assert session.poll(10.0, input_live=True) == []


def test_abnormal_close_before_drain_asks_for_a_reconnect() -> None:
    session = make()
    session.take()
    session.on_closed(None)
    (error,) = records(session.take().outputs)
    assert error["error"]["error_code"] == "stt_closed" and error["error"]["retryable"]
    assert session.needs_reconnect and not session.ended
    assert session.poll(1.0, input_live=True) == []  # nothing is sent on a dead connection


def test_policy_close_fails() -> None:
    session = make()
    session.on_closed(1008, "bad")
    assert session.status == "failed"


def test_manual_close_needs_done_to_be_complete() -> None:
    fmt = AudioFormat("pcm_s16le", 16000, endpoint="manual")
    session = make(fmt)
    session.accept(control(0, "end"), 0.0)
    assert session.poll(0.0, input_live=True) == ["close"]
    session.on_message('{"type":"transcript","is_final":true,"text":"Open turn","request_id":"r"}')
    session.on_message('{"type":"done","request_id":"r"}')
    session.on_closed(1000)
    assert session.status == "complete"
    transcripts = records(session.take().outputs, "transcripts")
    assert transcripts[-1]["transcript"] == "Open turn"


def test_drain_deadline_truncates() -> None:
    session = make(drain_deadline_s=2.0)
    session.take()
    session.accept(audio(0, b"\0\0" * 1600), 0.0)
    session.accept(control(1, "end"), 0.0)
    assert session.deadline == pytest.approx(2.1)
    drive(session, 0.5)
    session.on_message(auto_events({"type": "turn.start"}, {"type": "turn.update", "transcript": "par"})[1])
    session.check_deadline(2.0)
    assert not session.ended
    assert session.next_wakeup(2.0) == pytest.approx(2.1)
    session.check_deadline(2.1)
    assert session.status == "truncated"
    out = session.take().outputs
    errors = [r for r in records(out) if r["type"] == "session.error"]
    assert errors[0]["error"]["error_code"] == "drain_timeout"
    assert records(out, "transcripts")[-1] == {**records(out, "transcripts")[-1], "status": "truncated"}


@given(st.lists(st.text(max_size=6), min_size=1, max_size=8))
def test_session_transcript_is_the_verbatim_concatenation_of_turns(texts: list[str]) -> None:
    session = make()
    session.accept(control(0, "end"), 0.0)
    session.poll(0.0, input_live=True)
    for text in texts:
        for message in auto_events({"type": "turn.start"}, {"type": "turn.end", "transcript": text}):
            session.on_message(message)
    session.on_closed(1000)
    transcripts = records(session.take().outputs, "transcripts")
    assert [r["transcript"] for r in transcripts[:-1]] == texts
    assert transcripts[-1]["transcript"] == "".join(texts)


# -- recovery ----------------------------------------------------------------------------------


def feed_turn(session: Session, text: str, first: bool = False) -> None:
    events = [{"type": "turn.start"}, {"type": "turn.end", "transcript": text}]
    for message in auto_events(*([{"type": "connected"}] if first else []), *events):
        session.on_message(message)


def test_auto_turn_end_releases_held_audio_up_to_the_margin() -> None:
    session = make(replay_margin_ms=400)
    for seq in range(10):  # ten 100 ms chunks at offsets 100..109
        session.accept(audio(seq, bytes([seq + 1, 0]) * 1600), 0.0, offset=100 + seq)
    assert session.resume_offset == 100
    drive(session, 2.0)
    assert session.audio_ms == 1000
    feed_turn(session, "Hi", first=True)  # arrives after 1000 ms sent: keep from 600 ms on
    assert session.resume_offset == 106
    assert session.held_bytes == 4 * 3200


def test_manual_turn_releases_through_its_finalize() -> None:
    fmt = AudioFormat("pcm_s16le", 16000, endpoint="manual")
    session = make(fmt)
    session.accept(audio(0, b"\1\0" * 1600, fmt), 0.0, offset=10)
    session.accept(control(1, "finalize"), 0.0, offset=11)
    session.accept(audio(2, b"\2\0" * 1600, fmt), 0.0, offset=12)
    assert drive(session, 0.3) == [b"\1\0" * 1600, "finalize", b"\2\0" * 1600]
    for message in [
        '{"type":"transcript","is_final":true,"text":"One","request_id":"r"}',
        '{"type":"flush_done","request_id":"r"}',
    ]:
        session.on_message(message)
    assert session.resume_offset == 12  # exactly after the finalize: no margin


def test_reconnect_replays_the_audio_since_the_last_final_turn() -> None:
    session = make(replay_margin_ms=0)
    for seq in range(4):
        session.accept(audio(seq, bytes([seq + 1, 0]) * 1600), 0.0, offset=seq)
    drive(session, 0.2)  # two or three frames out
    feed_turn(session, "Zero", first=True)
    kept = session.resume_offset
    session.on_closed(None)
    session.take()
    session.reconnect()
    assert not session.needs_reconnect and session.reconnects == 1
    replayed = [x for x in drive(session, 1.0, start=10.0) if isinstance(x, bytes)]
    assert replayed == [bytes([k + 1, 0]) * 1600 for k in range(kept, 4)]
    session.accept(control(4, "end"), 11.0, offset=4)
    assert drive(session, 11.5, start=11.0)[-1] == '{"type":"close"}'
    for message in auto_events({"type": "turn.start"}, {"type": "turn.end", "transcript": "One"}):
        session.on_message(message)  # the new connection's first text has no leading space
    session.on_closed(1000)
    transcripts = records(session.take().outputs, "transcripts")
    assert [(r["kind"], r["turn"], r["transcript"]) for r in transcripts] == [
        ("turn", 1, " One"),  # the seam gets the separator the provider would have sent
        ("session", 2, "Zero One"),
    ]


def test_seam_adds_no_separator_for_a_provider_that_sends_none() -> None:
    session = make(replay_margin_ms=0)
    session.accept(audio(0, b"\1\0" * 1600), 0.0, offset=0)
    drive(session, 0.2)
    feed_turn(session, "Zero.", first=True)
    feed_turn(session, "One.")  # a later turn on the same connection, without a leading space
    session.on_closed(None)
    session.reconnect()
    session.accept(control(1, "end"), 11.0, offset=1)
    drive(session, 11.5, start=11.0)
    feed_turn(session, "Two.")
    session.on_closed(1000)
    transcripts = records(session.take().outputs, "transcripts")
    assert transcripts[-1]["transcript"] == "Zero.One.Two."


def test_5xx_error_reconnects_4xx_fails_and_reconnects_are_bounded() -> None:
    session = make(max_reconnects=1)
    session.on_message(orjson.dumps({"type": "error", "status_code": 503, "title": "t", "message": "m"}))
    assert session.needs_reconnect and not session.ended
    session.reconnect()
    session.on_message(orjson.dumps({"type": "error", "status_code": 500, "title": "t", "message": "m"}))
    session.reconnect()
    assert session.status == "failed"
    assert records(session.take().outputs)[-2]["error"]["error_code"] == "stt_gave_up"


@pytest.mark.parametrize(("status", "retry"), [(None, True), (503, True), (429, True), (401, False), (400, False)])
def test_connect_failures(status: int | None, retry: bool) -> None:
    session = make()
    session.connect_failed(
        ProviderError.transport("nope") if status is None else ProviderError.from_handshake(status, b"")
    )
    assert session.needs_reconnect is retry
    assert session.ended is not retry


def test_checkpoint_and_resume_continue_numbering_without_a_second_start() -> None:
    session = make(replay_margin_ms=0)
    session.accept(audio(0, b"\1\0" * 1600), 0.0, offset=7)
    session.accept(audio(1, b"\2\0" * 1600), 0.0, offset=8)
    drive(session, 0.15)
    feed_turn(session, "First.", first=True)
    checkpoint = session.checkpoint()
    validate("checkpoint", checkpoint.to_dict())
    assert checkpoint.status == "open" and checkpoint.transcript == "First."
    assert dataclasses.replace(session.checkpoint(), at=0) == dataclasses.replace(checkpoint, at=0)  # a pure read
    resumed = resumed_from(checkpoint)
    assert checkpoint.format == S16
    assert resumed.take().outputs == []  # no second session.start
    assert not resumed.accept(audio(checkpoint.next_input_seq - 1, b"\0\0"), 0.0)  # below: duplicate
    resumed.accept(control(checkpoint.next_input_seq, "end"), 0.0, offset=checkpoint.resume_offset)
    resumed.poll(0.0, input_live=True)
    for message in auto_events({"type": "turn.start"}, {"type": "turn.end", "transcript": "Second."}):
        resumed.on_message(message)
    resumed.on_closed(1000)
    out = resumed.take().outputs
    turns = records(out)
    assert [r["type"] for r in turns] == ["turn.start", "turn.end", "session.end"]
    assert [r["seq"] for r in turns] == list(range(checkpoint.next_seq, checkpoint.next_seq + 3))
    final = records(out, "transcripts")[-1]
    assert final["transcript"] == "First. Second." and final["turn"] == 2
    assert final["seq"] == checkpoint.next_transcript_seq + 1
    done = resumed.checkpoint()
    assert done.status == "complete" and done.close_offset == checkpoint.resume_offset


@pytest.mark.parametrize(
    ("before", "expected"),
    [
        (["Zero.", "One."], "Zero.One.Two."),  # seen to start a later turn without a separator: none added
        (["Zero.", " One."], "Zero. One. Two."),  # seen to separate: the seam gets the space
        (["Zero."], "Zero. Two."),  # nothing seen yet: the documented leading space is assumed
    ],
)
def test_a_crash_resume_keeps_what_the_session_learned_about_separators(before: list[str], expected: str) -> None:
    session = make(replay_margin_ms=0)
    session.accept(audio(0, b"\1\0" * 1600), 0.0, offset=0)
    session.accept(audio(1, b"\2\0" * 1600), 0.0, offset=1)
    drive(session, 0.15)
    for k, text in enumerate(before):
        feed_turn(session, text, first=k == 0)
    stored = session.take().checkpoint.to_json()  # what stt.sessions holds for the next owner
    validate("checkpoint", orjson.loads(stored))
    checkpoint = Checkpoint.from_json(stored)
    resumed = resumed_from(checkpoint)
    resumed.accept(control(checkpoint.next_input_seq, "end"), 0.0, offset=checkpoint.resume_offset)
    resumed.poll(0.0, input_live=True)
    feed_turn(resumed, "Two.", first=True)  # a fresh connection's first text has no leading space
    resumed.on_closed(1000)
    transcripts = records(resumed.take().outputs, "transcripts")
    assert [(r["kind"], r["transcript"]) for r in transcripts] == [
        ("turn", expected.removeprefix("".join(before))),
        ("session", expected),
    ]


def test_truncate_ends_the_session_with_the_reason_and_keeps_finished_turns() -> None:
    session = make()
    session.accept(audio(0, b"\1\0" * 1600), 0.0)
    session.poll(0.0, input_live=True)
    feed_turn(session, "Kept.", first=True)
    session.on_message(auto_events({"type": "turn.start"})[0])  # a turn still open: not final, not kept
    session.truncate("idle_timeout", "no input for 120 s")
    assert session.status == "truncated" and session.ended
    out = session.take().outputs
    error = [r for r in records(out) if r["type"] == "session.error"][-1]
    assert error["error"]["error_code"] == "idle_timeout"
    final = records(out, "transcripts")[-1]
    assert (final["kind"], final["status"], final["transcript"]) == ("session", "truncated", "Kept.")
    assert session.poll(1.0, input_live=True) == []
    session.truncate("max_duration", "again")  # idempotent once ended
    assert session.take().outputs == []


# -- one retry rule ----------------------------------------------------------------------------


def test_in_stream_429_concurrency_limited_reconnects_like_a_handshake_429() -> None:
    session = make()
    session.take()
    session.on_message(
        orjson.dumps(
            {"type": "error", "status_code": 429, "title": "Busy", "message": "m", "error_code": "concurrency_limited"}
        )
    )
    assert session.needs_reconnect and not session.ended
    (error,) = records(session.take().outputs)
    assert error["error"]["status_code"] == 429 and error["error"]["retryable"] is True
    session.reconnect()
    assert not session.needs_reconnect and session.reconnects == 1


def test_in_stream_error_with_status_500_as_a_float_reconnects() -> None:
    session = make()
    session.take()
    session.on_message(b'{"type":"error","status_code":500.0,"title":"t","message":"m"}')
    assert session.needs_reconnect and not session.ended
    (error,) = records(session.take().outputs)
    assert error["error"]["status_code"] == 500 and error["error"]["retryable"] is True
    validate("turn", error)


def test_handshake_refusals_follow_the_same_rule() -> None:
    for status, retry in [(429, True), (500, True), (403, False)]:
        session = make()
        session.connect_failed(ProviderError.from_handshake(status, b"nope"))
        (_, error, *_) = records(session.take().outputs)
        assert error["error"] == {
            "status_code": status,
            "title": "STT connection refused",
            "message": f"STT upgrade refused: {status} nope",
            "error_code": "stt_connect_failed",
            "retryable": retry,
        }
        assert session.needs_reconnect is retry and session.ended is not retry


# -- fail, scrub ---------------------------------------------------------------------------------


def test_fail_ends_the_session_failed_with_the_reason() -> None:
    session = make()
    session.accept(audio(0, b"\1\0" * 1600), 0.0)
    session.fail("runner_crashed", "the session's task crashed")
    assert session.ended and session.status == "failed"
    out = session.take().outputs
    error, end = records(out)[-2:]
    assert error["type"] == "session.error" and error["error"]["error_code"] == "runner_crashed"
    assert error["error"]["retryable"] is False
    assert end["type"] == "session.end" and end["status"] == "failed"
    assert records(out, "transcripts")[-1]["status"] == "failed"
    session.fail("again", "x")  # idempotent once ended
    assert session.take().outputs == []


def scrubbing(fmt: AudioFormat = S16) -> Session:
    return Session(
        "s1", fmt, first_offset=0, config=SessionConfig(), wall_ms=lambda: 1, scrub=lambda s: s.replace("sk-KEY", "***")
    )


def test_provider_text_is_scrubbed_before_it_goes_into_a_record() -> None:
    session = scrubbing()
    session.on_message(b"sk-KEY is not json")
    session.on_message(
        orjson.dumps(
            {"type": "error", "status_code": 503, "title": "sk-KEY t", "message": "m sk-KEY", "error_code": "sk-KEY"}
        )
    )
    session.reconnect()
    session.on_closed(1011, "reason sk-KEY")
    session.reconnect()
    session.connect_failed(ProviderError.from_handshake(500, b"body sk-KEY"))
    out = session.take().outputs
    errors = [r["error"] for r in records(out) if r["type"] == "session.error"]
    assert len(errors) == 4
    assert "sk-KEY" not in orjson.dumps(errors).decode()
    assert errors[1] == {
        "status_code": 503,
        "title": "*** t",
        "message": "m ***",
        "error_code": "***",
        "retryable": True,
    }


def test_by_default_provider_text_is_cut_to_512_characters() -> None:
    session = make()
    session.take()
    session.on_message(orjson.dumps({"type": "error", "status_code": 400, "title": "t" * 2000, "message": "m" * 5000}))
    (error, *_) = records(session.take().outputs)
    assert error["error"]["title"] == "t" * 512 and error["error"]["message"] == "m" * 512


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=4,
)
event_keys = st.sampled_from(
    ["type", "transcript", "text", "is_final", "status_code", "request_id", "title", "message"]
)
event_types = st.sampled_from(["turn.start", "turn.update", "turn.end", "transcript", "flush_done", "done", "error"])


@given(
    st.lists(
        st.dictionaries(event_keys, json_values | event_types, max_size=5) | json_values | st.binary(max_size=8),
        max_size=6,
    ),
    st.sampled_from(["auto", "manual"]),
)
def test_any_provider_message_is_handled_without_raising(messages: list[object], endpoint: str) -> None:
    session = make(AudioFormat("pcm_s16le", 16000, endpoint=endpoint))  # type: ignore[arg-type]
    for message in messages:
        try:
            frame = message if isinstance(message, bytes) else orjson.dumps(message)
        except (orjson.JSONEncodeError, TypeError):
            continue  # not representable as JSON (e.g. an integer beyond 64 bits)
        session.on_message(frame)
        session.on_message(frame.decode("utf-8", "replace"))
    for record in records(session.take().outputs):
        validate("turn", record)


# -- take(): outputs and the checkpoint that counts them ----------------------------------------

AUTO_MESSAGES = [
    {"type": "connected", "request_id": "r"},
    {"type": "turn.start"},
    {"type": "turn.update", "transcript": "a"},
    {"type": "turn.end", "transcript": "a b"},
    {"type": "error", "status_code": 503, "title": "t", "message": "m"},
    {"type": "error", "status_code": 429, "title": "t", "message": "m"},
    {"type": "error", "status_code": 400, "title": "t", "message": "m"},
]
MANUAL_MESSAGES = [
    {"type": "transcript", "text": "x", "is_final": False},
    {"type": "transcript", "text": "x", "is_final": True},
    {"type": "flush_done"},
    {"type": "done"},
    {"type": "error", "status_code": 500.0},
]

operations = st.one_of(
    st.tuples(st.just("audio"), st.integers(0, 3), st.integers(1, 4)),  # seq skip, 100 ms frames
    st.tuples(st.sampled_from(["finalize", "end", "truncate", "take", "reconnect", "garbage"])),
    st.tuples(st.just("poll"), st.floats(0.0, 0.5)),
    st.tuples(st.just("message"), st.integers(0, len(AUTO_MESSAGES) - 1)),
    st.tuples(st.just("closed"), st.sampled_from([None, 1000, 1008, 1011])),
    st.tuples(st.just("deadline"), st.floats(0.0, 40.0)),
)


@given(
    st.lists(operations, max_size=40),
    st.sampled_from(["auto", "manual"]),
    st.none() | st.tuples(st.integers(0, 50), st.integers(0, 20), st.integers(0, 30)),
)
def test_take_returns_contiguous_outputs_and_a_checkpoint_that_counts_exactly_them(
    ops: list[tuple[Any, ...]], endpoint: str, resumed: tuple[int, int, int] | None
) -> None:
    fmt = AudioFormat("pcm_s16le", 16000, endpoint=endpoint)  # type: ignore[arg-type]
    resume = None
    if resumed is not None:
        next_seq, next_turn, next_transcript_seq = resumed
        resume = Resume(next_seq, next_turn, next_transcript_seq, "Before.", 0, 0.0)
    session = Session(
        "s1", fmt, first_offset=0, config=SessionConfig(max_reconnects=3), wall_ms=lambda: 1, resume=resume
    )
    turn_base = resume.next_seq if resume else 0
    transcript_base = resume.next_transcript_seq if resume else 0
    turns: list[int] = []
    transcripts: list[int] = []
    messages = AUTO_MESSAGES if endpoint == "auto" else MANUAL_MESSAGES
    now, seq = 0.0, 0

    def take() -> None:
        taken = session.take()
        for output in taken.outputs:
            (turns if output.topic == "turns" else transcripts).append(output.record.seq)
        assert turns == list(range(turn_base, turn_base + len(turns)))
        assert transcripts == list(range(transcript_base, transcript_base + len(transcripts)))
        assert taken.checkpoint.next_seq == turn_base + len(turns)
        assert taken.checkpoint.next_transcript_seq == transcript_base + len(transcripts)
        assert taken.checkpoint.status == (session.status or "open")
        validate("checkpoint", taken.checkpoint.to_dict())

    for op in ops:
        kind = op[0]
        if kind == "audio" or kind in ("finalize", "end"):
            seq += op[1] if kind == "audio" else 0
            message = audio(seq, b"\1\0" * 1600 * op[2], fmt) if kind == "audio" else control(seq, kind)
            try:
                session.accept(message, now)
                seq += 1
            except Rejected:
                pass
        elif kind == "poll":
            now += op[1]
            session.poll(now, input_live=True)
        elif kind == "message":
            session.on_message(orjson.dumps(messages[op[1] % len(messages)]))
        elif kind == "garbage":
            session.on_message(b"\x00binary")
        elif kind == "closed":
            session.on_closed(op[1])
        elif kind == "deadline":
            session.check_deadline(now + op[1])
        elif kind == "truncate":
            session.truncate("idle_timeout", "quiet")
        elif kind == "reconnect" and session.needs_reconnect:
            session.reconnect()
        elif kind == "take":
            take()
    take()
    assert session.take().outputs == []


def test_a_session_that_ends_before_any_input_has_a_valid_checkpoint() -> None:
    session = make()
    session.truncate("idle_timeout", "no input after a restart")
    checkpoint = session.take().checkpoint
    assert checkpoint.status == "truncated" and checkpoint.close_offset == 0
    validate("checkpoint", checkpoint.to_dict())


def test_the_end_records_timestamp_lands_on_the_session_final_only() -> None:
    session = make()
    session.take()
    session.accept(audio(0, b"\1\0" * 1600), 0.0)
    session.accept(InputMessage("s1", "end", 1, timestamp=1767225603200), 0.0)
    drive(session, 1.0)
    for message in auto_events({"type": "turn.start"}, {"type": "turn.end", "transcript": "Hi"}):
        session.on_message(message)
    session.on_closed(1000)
    transcripts = records(session.take().outputs, "transcripts")
    assert [(r["kind"], r.get("end_at")) for r in transcripts] == [("turn", None), ("session", 1767225603200)]
    for record in transcripts:
        validate("transcript", record)


def test_a_session_truncated_without_end_has_no_end_at() -> None:
    session = make()
    session.take()
    session.accept(audio(0, b"\1\0" * 1600), 0.0)
    session.truncate("idle_timeout", "no input")
    (final,) = records(session.take().outputs, "transcripts")
    assert final["kind"] == "session" and "end_at" not in final


def test_has_outputs_says_whether_take_would_return_any() -> None:
    session = make()
    assert session.has_outputs  # session.start
    assert session.take().outputs and not session.has_outputs
    assert session.accept(audio(0, b"\1\0" * 8000), 0.0)
    drive(session, 0.5)
    assert not session.has_outputs and session.take().outputs == []
    for message in auto_events({"type": "connected"}, {"type": "turn.start"}):
        session.on_message(message)
    assert session.has_outputs
    assert [r["type"] for r in records(session.take().outputs)] == ["turn.start"]
    assert not session.has_outputs


def test_each_request_id_the_provider_sends_is_scrubbed_into_the_records() -> None:
    scrubbed: list[str] = []

    def scrub(text: str) -> str:
        scrubbed.append(text)
        return text.replace("sk-secret", "[redacted]")

    session = Session("s1", S16, first_offset=0, config=SessionConfig(), wall_ms=lambda: 1, scrub=scrub)
    session.take()
    session.on_message('{"type":"connected","request_id":"r-sk-secret"}')
    session.on_message('{"type":"turn.start","request_id":"r-sk-secret"}')
    session.on_message('{"type":"turn.update","transcript":"Hi","request_id":"r2-sk-secret"}')
    assert [r["request_id"] for r in records(session.take().outputs)] == ["r-[redacted]", "r2-[redacted]"]
    assert scrubbed == ["r-sk-secret", "r2-sk-secret"]  # once per distinct id, not once per event
