"""Tests of :mod:`pipeline.events`: turn normalization for both endpoints and verbatim assembly."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from pipeline.contract import ProviderErrorInfo
from pipeline.events import (
    AutoNormalizer,
    AutoState,
    ManualNormalizer,
    TranscriptAssembler,
    TurnEvent,
)

RID = "req-1"


def ev(kind: str, transcript: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind, "request_id": RID, **extra}
    if transcript is not None:
        out["transcript"] = transcript
    return out


def feed_all(n: AutoNormalizer | ManualNormalizer, events: Iterable[Mapping[str, Any]]) -> list[TurnEvent]:
    out: list[TurnEvent] = []
    for e in events:
        out += n.feed(e)
    return out


def kinds(events: list[TurnEvent]) -> list[tuple[str, int | None, str | None]]:
    return [(e.type, e.turn, e.transcript) for e in events]


# == auto ==============================================================================================


def test_auto_connected_records_request_id_and_emits_nothing() -> None:
    n = AutoNormalizer()
    assert n.feed({"type": "connected", "request_id": "abc"}) == []
    assert n.request_id == "abc"
    assert n.state is AutoState.IDLE
    assert n.feed({"type": "turn.start"}) == [TurnEvent("turn.start", turn=0, request_id="abc")]


def test_auto_full_legal_walk() -> None:
    n = AutoNormalizer()
    out = feed_all(
        n,
        [
            ev("connected"),
            ev("turn.start"),
            ev("turn.update", "Hello"),
            ev("turn.update", "Hello, how"),
            ev("turn.eager_end", "Hello, how are you?"),
            ev("turn.resume"),
            ev("turn.update", "Hello, how are you? I"),
            ev("turn.eager_end", "Hello, how are you? I mean"),
            ev("turn.end", "Hello, how are you? I mean it."),
            ev("turn.start"),
            ev("turn.update", " Yes"),
            ev("turn.end", " Yes."),
        ],
    )
    assert kinds(out) == [
        ("turn.start", 0, None),
        ("turn.update", 0, "Hello"),
        ("turn.update", 0, "Hello, how"),
        ("turn.eager_end", 0, "Hello, how are you?"),
        ("turn.resume", 0, None),
        ("turn.update", 0, "Hello, how are you? I"),
        ("turn.eager_end", 0, "Hello, how are you? I mean"),
        ("turn.end", 0, "Hello, how are you? I mean it."),
        ("turn.start", 1, None),
        ("turn.update", 1, " Yes"),
        ("turn.end", 1, " Yes."),
    ]
    assert all(e.request_id == RID and e.error is None for e in out)
    assert n.state is AutoState.IDLE
    assert n.turn == 2
    assert n.unknown_events == 0
    assert not n.anomalies


def test_auto_states_follow_the_protocol() -> None:
    n = AutoNormalizer()
    assert n.state is AutoState.IDLE and n.transcript is None
    n.feed(ev("turn.start"))
    assert n.state is AutoState.SPEAKING and n.transcript is None and n.turn == 0
    n.feed(ev("turn.update", "a"))
    assert n.state is AutoState.SPEAKING and n.transcript == "a"
    n.feed(ev("turn.eager_end", "ab"))
    assert n.state is AutoState.EAGER_ENDED and n.transcript == "ab"
    n.feed(ev("turn.resume"))
    assert n.state is AutoState.SPEAKING and n.transcript == "ab"
    n.feed(ev("turn.end", "abc"))
    assert n.state is AutoState.IDLE and n.transcript is None and n.turn == 1


def test_auto_speaking_to_end_directly() -> None:
    n = AutoNormalizer()
    out = feed_all(n, [ev("turn.start"), ev("turn.end", "Hi.")])
    assert kinds(out) == [("turn.start", 0, None), ("turn.end", 0, "Hi.")]


def test_auto_eager_ended_to_end() -> None:
    n = AutoNormalizer()
    out = feed_all(n, [ev("turn.start"), ev("turn.eager_end", "Hi"), ev("turn.end", "Hi.")])
    assert kinds(out) == [("turn.start", 0, None), ("turn.eager_end", 0, "Hi"), ("turn.end", 0, "Hi.")]


def test_auto_eager_end_with_the_same_text_as_the_update_is_emitted() -> None:
    n = AutoNormalizer()
    out = feed_all(n, [ev("turn.start"), ev("turn.update", "Hi"), ev("turn.eager_end", "Hi")])
    assert kinds(out)[-1] == ("turn.eager_end", 0, "Hi")


def test_auto_transcript_is_replaced_not_concatenated_and_kept_verbatim() -> None:
    n = AutoNormalizer()
    out = feed_all(n, [ev("turn.start"), ev("turn.update", " Insert"), ev("turn.update", " Inserting  ")])
    assert out[-1].transcript == " Inserting  "
    assert n.transcript == " Inserting  "
    out = n.feed(ev("turn.end", " Inserting spaces. "))
    assert out == [TurnEvent("turn.end", turn=0, transcript=" Inserting spaces. ", request_id=RID)]


def test_auto_empty_turn() -> None:
    n = AutoNormalizer()
    assert kinds(feed_all(n, [ev("turn.start"), ev("turn.end", "")])) == [
        ("turn.start", 0, None),
        ("turn.end", 0, ""),
    ]


def test_auto_first_turn() -> None:
    n = AutoNormalizer(first_turn=7)
    assert [e.turn for e in feed_all(n, [ev("turn.start"), ev("turn.end", "x")])] == [7, 7]
    assert n.turn == 8
    with pytest.raises(ValueError):
        AutoNormalizer(first_turn=-1)


# -- auto: UNCONFIRMED and out-of-protocol cases ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["turn.update", "turn.eager_end", "turn.end"])
def test_auto_text_event_without_start_synthesizes_the_start(kind: str) -> None:
    n = AutoNormalizer()
    out = n.feed(ev(kind, "Hi"))
    assert kinds(out) == [("turn.start", 0, None), (kind, 0, "Hi")]
    assert n.anomalies["missing_start"] == 1


def test_auto_end_without_start_then_a_normal_turn() -> None:
    n = AutoNormalizer()
    out = feed_all(n, [ev("turn.end", "One."), ev("turn.start"), ev("turn.end", " Two.")])
    assert kinds(out) == [
        ("turn.start", 0, None),
        ("turn.end", 0, "One."),
        ("turn.start", 1, None),
        ("turn.end", 1, " Two."),
    ]


def test_auto_identical_consecutive_updates_are_dropped() -> None:
    n = AutoNormalizer()
    out = feed_all(
        n,
        [ev("turn.start"), ev("turn.update", "Hi"), ev("turn.update", "Hi"), ev("turn.update", "Hi")],
    )
    assert kinds(out) == [("turn.start", 0, None), ("turn.update", 0, "Hi")]
    assert n.anomalies["unchanged_update"] == 2
    assert kinds(n.feed(ev("turn.update", "Hi there"))) == [("turn.update", 0, "Hi there")]


def test_auto_identical_text_in_the_next_turn_is_not_dropped() -> None:
    n = AutoNormalizer()
    feed_all(n, [ev("turn.start"), ev("turn.update", "Yes"), ev("turn.end", "Yes")])
    out = feed_all(n, [ev("turn.start"), ev("turn.update", "Yes")])
    assert kinds(out) == [("turn.start", 1, None), ("turn.update", 1, "Yes")]


def test_auto_update_while_eager_ended_is_an_implicit_resume() -> None:
    n = AutoNormalizer()
    feed_all(n, [ev("turn.start"), ev("turn.eager_end", "Hi")])
    out = n.feed(ev("turn.update", "Hi there"))
    assert kinds(out) == [("turn.resume", 0, None), ("turn.update", 0, "Hi there")]
    assert n.state is AutoState.SPEAKING
    assert n.anomalies["update_while_eager_ended"] == 1


def test_auto_unchanged_update_while_eager_ended_resumes_only() -> None:
    n = AutoNormalizer()
    feed_all(n, [ev("turn.start"), ev("turn.eager_end", "Hi")])
    assert kinds(n.feed(ev("turn.update", "Hi"))) == [("turn.resume", 0, None)]
    assert n.state is AutoState.SPEAKING


@pytest.mark.parametrize("prefix", [[], [ev("turn.start")], [ev("turn.start"), ev("turn.update", "a")]])
def test_auto_resume_when_not_eager_ended_is_ignored(prefix: list[dict[str, Any]]) -> None:
    n = AutoNormalizer()
    feed_all(n, prefix)
    state = n.state
    assert n.feed(ev("turn.resume")) == []
    assert n.state is state
    assert n.anomalies["stray_resume"] == 1


def test_auto_repeated_start_is_ignored() -> None:
    n = AutoNormalizer()
    feed_all(n, [ev("turn.start"), ev("turn.update", "Hel")])
    assert n.feed(ev("turn.start")) == []
    assert n.anomalies["repeated_start"] == 1
    assert kinds(n.feed(ev("turn.end", "Hello."))) == [("turn.end", 0, "Hello.")]


def test_auto_repeated_start_while_eager_ended_is_ignored() -> None:
    n = AutoNormalizer()
    feed_all(n, [ev("turn.start"), ev("turn.eager_end", "Hi")])
    assert n.feed(ev("turn.start")) == []
    assert n.state is AutoState.EAGER_ENDED


def test_auto_repeated_eager_end() -> None:
    n = AutoNormalizer()
    feed_all(n, [ev("turn.start"), ev("turn.eager_end", "Hi")])
    assert n.feed(ev("turn.eager_end", "Hi")) == []
    assert kinds(n.feed(ev("turn.eager_end", "Hi you"))) == [("turn.eager_end", 0, "Hi you")]
    assert n.anomalies["repeated_eager_end"] == 2
    assert n.state is AutoState.EAGER_ENDED


@pytest.mark.parametrize("kind", ["turn.update", "turn.eager_end"])
@pytest.mark.parametrize("bad", [None, 3, ["x"]])
def test_auto_text_event_without_transcript_is_ignored(kind: str, bad: object) -> None:
    n = AutoNormalizer()
    n.feed(ev("turn.start"))
    e = ev(kind)
    if bad is not None:
        e["transcript"] = bad
    assert n.feed(e) == []
    assert n.state is AutoState.SPEAKING
    assert n.anomalies["missing_transcript"] == 1


def test_auto_end_without_transcript_keeps_the_last_text() -> None:
    n = AutoNormalizer()
    feed_all(n, [ev("turn.start"), ev("turn.update", "So far")])
    assert kinds(n.feed(ev("turn.end"))) == [("turn.end", 0, "So far")]
    assert kinds(feed_all(n, [ev("turn.start"), ev("turn.end")])) == [
        ("turn.start", 1, None),
        ("turn.end", 1, ""),
    ]
    assert n.anomalies["missing_transcript"] == 2


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (400, False), (401, False), (429, True)])
def test_auto_error_is_a_session_error(status: int, retryable: bool) -> None:
    n = AutoNormalizer()
    feed_all(n, [ev("turn.start"), ev("turn.update", "a")])
    out = n.feed(
        {
            "type": "error",
            "title": "Invalid model",
            "message": "No such model",
            "error_code": "model_not_found",
            "status_code": status,
            "request_id": "req-9",
            "doc_url": "https://example.invalid",
        }
    )
    assert out == [
        TurnEvent(
            "session.error",
            request_id="req-9",
            error=ProviderErrorInfo(
                status_code=status,
                title="Invalid model",
                message="No such model",
                error_code="model_not_found",
                retryable=retryable,
            ),
        )
    ]
    assert n.state is AutoState.SPEAKING  # the turn state is left alone


@pytest.mark.parametrize("status", [None, True, "abc", 500.5, 42, [500], {"code": 500}])
def test_auto_error_without_a_usable_status_is_retryable_like_a_transport_loss(status: object) -> None:
    n = AutoNormalizer()
    e: dict[str, Any] = {"type": "error"}
    if status is not None:
        e["status_code"] = status
    (out,) = n.feed(e)
    assert out.error == ProviderErrorInfo(status_code=None, title="", message="", error_code=None, retryable=True)
    assert out.turn is None and out.transcript is None


@pytest.mark.parametrize(("status", "code"), [(500.0, 500), ("503", 503), (" 429 ", 429), (404.0, 404)])
def test_auto_error_status_given_as_float_or_string_is_read_as_an_integer(status: object, code: int) -> None:
    (out,) = AutoNormalizer().feed({"type": "error", "status_code": status})
    assert out.error is not None and out.error.status_code == code
    assert out.error.retryable is (code != 404)


@pytest.mark.parametrize("e", [{"type": "turn.sideways"}, {"type": "transcript", "text": "x"}, {}, {"type": 5}])
def test_auto_unknown_events_are_ignored_and_counted(e: dict[str, Any]) -> None:
    n = AutoNormalizer()
    n.feed(ev("turn.start"))
    assert n.feed(e) == []
    assert n.unknown_events == 1
    assert n.state is AutoState.SPEAKING


def test_auto_request_id_from_any_event_is_kept() -> None:
    n = AutoNormalizer()
    (start,) = n.feed({"type": "turn.start", "request_id": "r2"})
    assert start.request_id == "r2"
    (update,) = n.feed({"type": "turn.update", "transcript": "a"})
    assert update.request_id == "r2"


# == manual ============================================================================================


def tr(text: str, final: bool) -> dict[str, Any]:
    return {"type": "transcript", "is_final": final, "text": text, "request_id": RID}


FLUSH = {"type": "flush_done", "request_id": RID}
DONE = {"type": "done", "request_id": RID}


def test_manual_interim_then_auto_finalized_final() -> None:
    n = ManualNormalizer()
    out = feed_all(n, [tr("How", False), tr("How are", False), tr("How are you?", True)])
    assert kinds(out) == [
        ("turn.start", 0, None),
        ("turn.update", 0, "How"),
        ("turn.update", 0, "How are"),
        ("turn.update", 0, "How are you?"),
        ("turn.end", 0, "How are you?"),
    ]
    assert not n.turn_open and n.turn == 1
    assert all(e.request_id == RID for e in out)


def test_manual_final_opens_a_turn() -> None:
    n = ManualNormalizer()
    assert kinds(n.feed(tr("Hi.", True))) == [
        ("turn.start", 0, None),
        ("turn.update", 0, "Hi."),
        ("turn.end", 0, "Hi."),
    ]


@pytest.mark.parametrize("final", [True, False])
def test_manual_empty_text_opens_no_turn(final: bool) -> None:
    n = ManualNormalizer()
    assert n.feed(tr("", final)) == []
    assert not n.turn_open


def test_manual_finals_are_appended_verbatim_while_finalize_is_outstanding() -> None:
    n = ManualNormalizer()
    n.finalize_sent()
    out = feed_all(n, [tr("Insert", True), tr("ing spaces", True), tr(" is not safe ", True)])
    assert kinds(out) == [
        ("turn.start", 0, None),
        ("turn.update", 0, "Insert"),
        ("turn.update", 0, "Inserting spaces"),
        ("turn.update", 0, "Inserting spaces is not safe "),
    ]
    assert n.final_text == "Inserting spaces is not safe "
    assert kinds(n.feed(FLUSH)) == [("turn.end", 0, "Inserting spaces is not safe ")]
    assert n.outstanding_finalizes == 0


def test_manual_trimming_would_join_words_so_nothing_is_trimmed() -> None:
    n = ManualNormalizer()
    n.finalize_sent()
    feed_all(n, [tr("Trimming may", True), tr(" join words.", True)])
    (end,) = n.feed(FLUSH)
    assert end.transcript == "Trimming may join words."


def test_manual_interim_is_pending_text_after_the_finals() -> None:
    n = ManualNormalizer()
    n.finalize_sent()
    out = feed_all(
        n,
        [
            tr("Ignore this", False),  # interim, replaced by the final below
            tr("This is a", True),
            tr(" sin", False),
            tr(" single", False),
            tr(" single sentence.", True),
        ],
    )
    assert kinds(out) == [
        ("turn.start", 0, None),
        ("turn.update", 0, "Ignore this"),
        ("turn.update", 0, "This is a"),
        ("turn.update", 0, "This is a sin"),
        ("turn.update", 0, "This is a single"),
        ("turn.update", 0, "This is a single sentence."),
    ]
    assert kinds(n.feed(FLUSH)) == [("turn.end", 0, "This is a single sentence.")]


def test_manual_updates_only_when_the_visible_text_changes() -> None:
    n = ManualNormalizer()
    n.finalize_sent()
    feed_all(n, [tr("Hi", False)])
    assert n.feed(tr("Hi", False)) == []  # same interim
    assert n.feed(tr("Hi", True)) == []  # the final confirms the displayed text
    assert kinds(n.feed(tr("", False))) == []  # empty interim after the final: visible text unchanged
    assert kinds(n.feed(tr(" you", False))) == [("turn.update", 0, "Hi you")]
    assert kinds(n.feed(tr("", False))) == [("turn.update", 0, "Hi")]  # the interim is withdrawn
    assert kinds(n.feed(FLUSH)) == [("turn.end", 0, "Hi")]


def test_manual_final_confirming_interim_still_ends_an_auto_finalized_turn() -> None:
    n = ManualNormalizer()
    n.feed(tr("Hi.", False))
    assert kinds(n.feed(tr("Hi.", True))) == [("turn.end", 0, "Hi.")]


def test_manual_flush_done_after_final() -> None:
    n = ManualNormalizer()
    feed_all(n, [tr("Turn", False)])
    n.finalize_sent()
    out = feed_all(n, [tr("Turn one.", True), FLUSH])
    assert kinds(out) == [("turn.update", 0, "Turn one."), ("turn.end", 0, "Turn one.")]


def test_manual_flush_done_before_final_with_interim_only_keeps_one_turn() -> None:
    n = ManualNormalizer()
    feed_all(n, [tr("Turn", False)])
    n.finalize_sent()
    assert n.feed(FLUSH) == []  # no final text yet: its final is still on the way
    assert n.turn_open and n.outstanding_finalizes == 0
    assert n.anomalies["flush_done_before_final"] == 1
    out = n.feed(tr("Turn one.", True))
    assert kinds(out) == [("turn.update", 0, "Turn one."), ("turn.end", 0, "Turn one.")]


def test_manual_flush_done_before_final_without_interim() -> None:
    n = ManualNormalizer()
    n.finalize_sent()
    assert n.feed(FLUSH) == []  # no open turn: ends nothing
    assert kinds(n.feed(tr("Late.", True))) == [
        ("turn.start", 0, None),
        ("turn.update", 0, "Late."),
        ("turn.end", 0, "Late."),
    ]


def test_manual_flush_done_before_the_rest_of_the_finals() -> None:
    n = ManualNormalizer()
    n.finalize_sent()
    n.feed(tr("Part one", True))
    assert kinds(n.feed(FLUSH)) == [("turn.end", 0, "Part one")]
    out = n.feed(tr(", part two.", True))  # arrives after its flush_done: a turn of its own
    assert kinds(out) == [
        ("turn.start", 1, None),
        ("turn.update", 1, ", part two."),
        ("turn.end", 1, ", part two."),
    ]


def test_manual_several_finalizes_each_consumed_by_one_flush_done() -> None:
    n = ManualNormalizer()
    n.finalize_sent()
    n.finalize_sent()
    assert n.outstanding_finalizes == 2
    out = feed_all(n, [tr("One.", True), FLUSH, tr(" Two.", True), FLUSH, FLUSH])
    assert kinds(out) == [
        ("turn.start", 0, None),
        ("turn.update", 0, "One."),
        ("turn.end", 0, "One."),
        ("turn.start", 1, None),
        ("turn.update", 1, " Two."),
        ("turn.end", 1, " Two."),
    ]
    assert n.anomalies["unexpected_flush_done"] == 1  # the third flush_done


def test_manual_flush_done_without_finalize_is_ignored() -> None:
    n = ManualNormalizer()
    n.feed(tr("Hi", False))
    assert n.feed(FLUSH) == []
    assert n.turn_open
    assert n.anomalies["unexpected_flush_done"] == 1


def test_manual_flush_done_with_no_open_turn_consumes_the_finalize() -> None:
    n = ManualNormalizer()
    n.finalize_sent()
    assert n.feed(FLUSH) == []
    assert n.outstanding_finalizes == 0


def test_manual_done_ends_the_open_turn() -> None:
    n = ManualNormalizer()
    n.finalize_sent()
    feed_all(n, [tr("Bye", True), tr(" now", False)])
    out = n.feed(DONE)
    assert kinds(out) == [("turn.end", 0, "Bye")]  # interim text was never finalized
    assert n.finished and not n.turn_open


def test_manual_done_with_interim_only_ends_an_empty_turn() -> None:
    n = ManualNormalizer()
    n.feed(tr("mm", False))
    assert kinds(n.feed(DONE)) == [("turn.end", 0, "")]


def test_manual_done_with_no_open_turn() -> None:
    n = ManualNormalizer()
    assert not n.finished
    assert n.feed(DONE) == []
    assert n.finished


def test_manual_error_and_unknown_events() -> None:
    n = ManualNormalizer()
    (err,) = n.feed({"type": "error", "status_code": 502, "title": "Bad gateway", "message": "upstream"})
    assert err.type == "session.error"
    assert err.error is not None and err.error.retryable is True
    assert n.feed({"type": "connected", "request_id": "r"}) == []
    assert n.feed({"type": "turn.start"}) == []
    assert n.unknown_events == 2
    assert n.request_id == "r"


def test_manual_transcript_without_text_counts_as_empty() -> None:
    n = ManualNormalizer()
    n.feed(tr("Hi", False))
    out = n.feed({"type": "transcript", "is_final": True})
    assert kinds(out) == [("turn.update", 0, ""), ("turn.end", 0, "")]
    assert n.anomalies["missing_text"] == 1


def test_manual_is_final_must_be_true_to_be_final() -> None:
    n = ManualNormalizer()
    out = n.feed({"type": "transcript", "is_final": "true", "text": "Hi"})
    assert kinds(out) == [("turn.start", 0, None), ("turn.update", 0, "Hi")]
    assert n.turn_open and n.final_text == ""


def test_manual_first_turn() -> None:
    n = ManualNormalizer(first_turn=3)
    assert [e.turn for e in n.feed(tr("x", True))] == [3, 3, 3]
    with pytest.raises(ValueError):
        ManualNormalizer(first_turn=-1)


# == assembler =========================================================================================


def test_assembler_joins_verbatim() -> None:
    a = TranscriptAssembler()
    for i, t in enumerate(["Insert", "ing", " spaces ", "", " is  not safe. "]):
        a.add_turn(i, t)
    assert a.turns == ["Insert", "ing", " spaces ", "", " is  not safe. "]
    assert a.session_transcript == "Inserting spaces  is  not safe. "
    assert a.next_turn == 5


def test_assembler_rejects_out_of_order_turns() -> None:
    a = TranscriptAssembler()
    with pytest.raises(ValueError):
        a.add_turn(1, "x")
    a.add_turn(0, "a")
    with pytest.raises(ValueError):
        a.add_turn(0, "a")
    a.turns.append("not mine")
    assert a.turns == ["a"]


def test_assembler_first_turn() -> None:
    a = TranscriptAssembler(first_turn=4)
    a.add_turn(4, "x")
    with pytest.raises(ValueError):
        a.add_turn(6, "y")
    assert a.session_transcript == "x"


# == properties ========================================================================================

# deltas with leading/trailing spaces, empty strings and split words ("In" + "sert" + "ing")
_text = st.lists(st.sampled_from(["a", "b", " ", "In", "sert", "ing", ".", "\u00e9", "  "]), max_size=4).map("".join)


def check_turn_structure(events: list[TurnEvent], first_turn: int = 0) -> list[str]:
    """Assert the normalized stream is well formed; return the turn.end transcripts."""
    ends: list[str] = []
    open_turn: int | None = None
    next_turn = first_turn
    eager = False
    for e in events:
        if e.type == "session.error":
            continue
        if e.type == "turn.start":
            assert open_turn is None
            assert e.turn == next_turn
            open_turn = next_turn
            eager = False
            continue
        assert open_turn is not None and e.turn == open_turn, e
        if e.type == "turn.eager_end":
            eager = True
        elif e.type == "turn.resume":
            assert eager
            eager = False
        elif e.type == "turn.update":
            assert not eager
        if e.type in ("turn.update", "turn.eager_end", "turn.end"):
            assert e.transcript is not None
        else:
            assert e.transcript is None
        if e.type == "turn.end":
            assert e.transcript is not None
            ends.append(e.transcript)
            open_turn = None
            next_turn += 1
    return ends


@st.composite
def manual_script(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Client finalizes and server events, with each flush_done before or after its finals."""
    script: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(0, 8))):
        shape = draw(st.sampled_from(["speech", "finalize_final_first", "finalize_flush_first", "noise"]))
        interims = [("interim", t) for t in draw(st.lists(_text, max_size=3))]
        finals = [("final", t) for t in draw(st.lists(_text, max_size=3))]
        if shape == "speech":  # no finalize: server auto-finalization
            script += interims + finals
        elif shape == "finalize_final_first":
            script += [*interims, ("finalize", ""), *finals, ("flush_done", "")]
        elif shape == "finalize_flush_first":
            script += [*interims, ("finalize", ""), ("flush_done", ""), *finals]
        else:
            script += draw(st.permutations([*interims, *finals, ("finalize", ""), ("flush_done", "")]))
    if draw(st.booleans()):
        script.append(("done", ""))
    return script


@settings(max_examples=500, deadline=None)
@given(script=manual_script())
def test_property_manual_no_final_text_is_lost_or_duplicated(script: list[tuple[str, str]]) -> None:
    n = ManualNormalizer()
    out: list[TurnEvent] = []
    finals = ""
    for op, text in script:
        if op == "finalize":
            n.finalize_sent()
        elif op == "flush_done":
            out += n.feed(FLUSH)
        elif op == "done":
            out += n.feed(DONE)
        else:
            out += n.feed(tr(text, op == "final"))
            if op == "final":
                finals += text
    ends = check_turn_structure(out)
    open_text = n.final_text if n.turn_open else ""
    assert "".join(ends) + open_text == finals
    if n.finished:
        assert not n.turn_open
    a = TranscriptAssembler()
    for e in out:
        if e.type == "turn.end":
            assert e.turn is not None and e.transcript is not None
            a.add_turn(e.turn, e.transcript)
    assert a.session_transcript + open_text == finals
    for kind in n.anomalies:
        event(kind)


@st.composite
def auto_script(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[str]]:
    """A random walk over the auto state machine, with optional UNCONFIRMED events mixed in.

    Returns the provider events and the transcripts of its turn.end events.
    """
    events: list[dict[str, Any]] = [ev("connected")]
    ends: list[str] = []
    state = "idle"
    text = ""
    for _ in range(draw(st.integers(0, 40))):
        legal = {
            "idle": ["turn.start"],
            "speaking": ["turn.update", "turn.eager_end", "turn.end"],
            "eager": ["turn.resume", "turn.end"],
        }[state]
        odd = ["turn.update", "turn.end", "turn.resume", "turn.start", "turn.eager_end", "turn.update=", "junk"]
        kind = draw(st.sampled_from(legal) if draw(st.integers(0, 4)) else st.sampled_from(odd))
        if kind == "junk":
            events.append({"type": "turn.mystery", "transcript": "zzz"})
            continue
        if kind == "turn.update=":
            events.append(ev("turn.update", text))
            state = "speaking"
            continue
        if kind in ("turn.update", "turn.eager_end", "turn.end"):
            text += draw(_text)  # cumulative: emitted text is never revised
            events.append(ev(kind, text))
        else:
            events.append(ev(kind))
        if kind == "turn.start" and state == "idle":
            state, text = "speaking", ""
        elif kind == "turn.update":
            state = "speaking"
        elif kind == "turn.eager_end":
            state = "eager"
        elif kind == "turn.resume" and state == "eager":
            state = "speaking"
        elif kind == "turn.end":
            ends.append(text)
            state, text = "idle", ""
    return events, ends


@settings(max_examples=500, deadline=None)
@given(script=auto_script(), first_turn=st.integers(0, 3))
def test_property_auto_session_transcript_is_the_turn_ends(
    script: tuple[list[dict[str, Any]], list[str]], first_turn: int
) -> None:
    events, provider_ends = script
    n = AutoNormalizer(first_turn=first_turn)
    out = feed_all(n, events)
    ends = check_turn_structure(out, first_turn)
    assert ends == provider_ends
    a = TranscriptAssembler(first_turn=first_turn)
    for e in out:
        if e.type == "turn.end":
            assert e.turn is not None and e.transcript is not None
            a.add_turn(e.turn, e.transcript)
    assert a.session_transcript == "".join(provider_ends)
    assert a.next_turn == n.turn == first_turn + len(provider_ends)
    # consecutive updates within a turn always change the text
    for prev, cur in itertools.pairwise(out):
        if prev.type == cur.type == "turn.update":
            assert prev.transcript != cur.transcript
    assert n.unknown_events == sum(1 for e in events if e["type"] == "turn.mystery")
    for kind in n.anomalies:
        event(kind)
