"""The emulator's protocol core (pure): turn detection, manual finalization, validation, rate guard."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest
from numpy.typing import NDArray

from pipeline.audio import silence
from pipeline.emulator.engines.base import EngineEvent, SpeechEnd, SpeechStart, Text
from pipeline.emulator.faults import Fault, FaultPlan, RandomDrops
from pipeline.emulator.params import ConnectionParams, ParamError, TurnSettings, parse_params
from pipeline.emulator.protocol import (
    AutoSession,
    Close,
    ManualSession,
    Outgoing,
    RateGuard,
    silence_for_threshold,
)

RATE = 16000


class ScriptRecognizer:
    """Releases pre-programmed engine events once the audio clock passes their time."""

    def __init__(self, events: list[EngineEvent], tail: list[EngineEvent] | None = None) -> None:
        self._events = list(events)
        self._tail = list(tail or [])
        self._ms = 0.0

    def feed(self, samples: NDArray[np.float32]) -> list[EngineEvent]:
        self._ms += len(samples) * 1000.0 / RATE
        ready = [e for e in self._events if e.at_ms <= self._ms]
        self._events = self._events[len(ready) :]
        return ready

    def flush(self) -> list[EngineEvent]:
        tail, self._tail = self._tail, []
        return tail


def words(*spans: tuple[float, float, str]) -> list[EngineEvent]:
    """Engine events for words given as (start_ms, end_ms, text-with-separator)."""
    out: list[EngineEvent] = []
    for start, end, text in spans:
        out += [SpeechStart(start), Text(text, end - 1), SpeechEnd(end)]
    return out


def params(endpoint: str = "auto", **extra: str) -> ConnectionParams:
    query = {"model": ["ink-2"], "encoding": ["pcm_s16le"], "sample_rate": [str(RATE)]}
    query.update({k: [v] for k, v in extra.items()})
    return parse_params(endpoint, query, {"cartesia-version": "2026-03-01"})  # type: ignore[arg-type]


def feed_ms(session: AutoSession | ManualSession, total_ms: int, step_ms: int = 100) -> list[Outgoing]:
    out: list[Outgoing] = []
    chunk = silence("pcm_s16le", RATE * step_ms // 1000)
    for _ in range(total_ms // step_ms):
        out += session.audio(chunk)
    return out


def kinds(out: list[Outgoing]) -> list[str]:
    return [o["type"] if isinstance(o, dict) else f"close:{o.code}" for o in out]


def texts(out: list[Outgoing], kind: str) -> list[str]:
    key = "transcript" if kind.startswith("turn") else "text"
    return [o[key] for o in out if isinstance(o, dict) and o["type"] == kind]


# -- turn thresholds ---------------------------------------------------------------------------


def test_default_thresholds_map_to_documented_pauses() -> None:
    session = AutoSession(params(), ScriptRecognizer([]), "r")
    assert session.eager_silence_ms == pytest.approx(-500 * math.log(0.4))
    assert session.end_silence_ms == pytest.approx(-500 * math.log(0.2))
    assert 400 < session.eager_silence_ms < session.end_silence_ms < 900


def test_end_timeout_caps_the_end_pause() -> None:
    session = AutoSession(params(turn_end_timeout_ms="640"), ScriptRecognizer([]), "r")
    assert session.end_silence_ms == 640
    assert silence_for_threshold(0.05, 500) > 640


# -- auto endpoint -----------------------------------------------------------------------------


def test_auto_two_turns_cumulative_updates_and_leading_space() -> None:
    events = words((200, 400, "Hello"), (480, 700, " there.")) + words((2000, 2300, " How"), (2380, 2600, " now?"))
    session = AutoSession(params(), ScriptRecognizer(events), "req-1")
    out = session.opening() + feed_ms(session, 4000)
    assert kinds(out) == [
        "connected",
        "turn.start",
        "turn.update",
        "turn.update",
        "turn.eager_end",
        "turn.end",
        "turn.start",
        "turn.update",
        "turn.update",
        "turn.eager_end",
        "turn.end",
    ]
    assert texts(out, "turn.update") == ["Hello", "Hello there.", " How", " How now?"]
    assert texts(out, "turn.end") == ["Hello there.", " How now?"]
    assert "".join(texts(out, "turn.end")) == "Hello there. How now?"
    assert all(isinstance(o, dict) and o["request_id"] == "req-1" for o in out)


def test_auto_ambiguous_pause_gives_eager_end_then_resume() -> None:
    events = words((200, 400, "Wait"), (1000, 1200, " what?"))  # 600 ms pause: past eager, before end
    session = AutoSession(params(), ScriptRecognizer(events), "r")
    out = feed_ms(session, 3000)
    assert kinds(out) == [
        "turn.start",
        "turn.update",
        "turn.eager_end",
        "turn.resume",
        "turn.update",
        "turn.eager_end",
        "turn.end",
    ]
    assert texts(out, "turn.end") == ["Wait what?"]


def test_auto_no_turn_ends_without_audio() -> None:
    session = AutoSession(params(), ScriptRecognizer(words((100, 300, "Hi"))), "r")
    out = feed_ms(session, 500)
    assert kinds(out) == ["turn.start", "turn.update"]
    assert session.audio(b"") == []  # no audio, no time passes: the turn stays open
    assert kinds(feed_ms(session, 700)) == ["turn.eager_end", "turn.end"]


def test_auto_close_flushes_tail_and_ends_open_turn() -> None:
    events = words((100, 300, "Good"))
    session = AutoSession(params(), ScriptRecognizer(events, tail=[Text(" bye", 380), SpeechEnd(400)]), "r")
    feed_ms(session, 300)
    out = session.text('{"type":"close"}')
    assert kinds(out) == ["turn.update", "turn.end", "close:1000"]
    assert texts(out, "turn.end") == ["Good bye"]
    assert session.closed and session.audio(b"\0\0") == []


def test_auto_server_buffer_delays_recognition_and_close_releases_it() -> None:
    events = words((200, 400, "Hello"))
    session = AutoSession(params(), ScriptRecognizer(events), "r", buffer_ms=1000)
    assert feed_ms(session, 1100) == []  # only 100 ms processed: the word is still buffered
    assert session.audio_ms == 1100 and session.processed_ms == 100
    assert kinds(feed_ms(session, 1100)) == ["turn.start", "turn.update", "turn.eager_end"]
    out = session.text('{"type":"close"}')
    assert kinds(out) == ["turn.end", "close:1000"] and texts(out, "turn.end") == ["Hello"]


def test_manual_server_buffer_held_until_finalize() -> None:
    session = ManualSession(params("manual"), ScriptRecognizer(words((200, 400, "Hi"))), "r", buffer_ms=1000)
    assert feed_ms(session, 1000) == []
    out = session.text("finalize")
    assert kinds(out) == ["transcript", "transcript", "flush_done"]
    assert texts(out, "transcript") == ["Hi", "Hi"]
    assert session.processed_ms == 1000


def test_auto_close_when_idle_just_closes() -> None:
    session = AutoSession(params(), ScriptRecognizer([]), "r")
    assert session.text('{"type":"close"}') == [Close(1000)]


def test_auto_config_changes_thresholds_and_rejects_bad_ones() -> None:
    session = AutoSession(params(), ScriptRecognizer([]), "r")
    assert session.text('{"type":"config","turn":{"end_threshold":0.1}}') == []
    assert session.end_silence_ms == pytest.approx(-500 * math.log(0.1))
    bad = session.text('{"type":"config","turn":{"end_threshold":0.45}}')  # not below eager_end 0.4
    assert kinds(bad) == ["error"] and bad[0]["error_code"] == "invalid_turn_config"  # type: ignore[index]
    assert kinds(session.text("finalize")) == ["error"]
    assert not session.closed


def test_auto_partial_samples_are_carried_between_frames() -> None:
    session = AutoSession(params(), ScriptRecognizer([]), "r")
    session.audio(b"\0")
    assert session.audio_ms == 0
    session.audio(b"\0" * 3)
    assert session.audio_ms == pytest.approx(2 * 1000 / RATE)


# -- manual endpoint ---------------------------------------------------------------------------


def test_manual_finalize_mid_word_splits_the_word() -> None:
    events: list[EngineEvent] = [SpeechStart(100), Text("Insert", 340), Text("i", 380), Text("n", 420), Text("g", 460)]
    session = ManualSession(params("manual"), ScriptRecognizer([*events, SpeechEnd(500)]), "r")
    feed_ms(session, 400)
    first = session.text("finalize")
    assert kinds(first) == ["transcript", "flush_done"]
    assert first[0]["is_final"] is True and first[0]["text"] == "Inserti"  # type: ignore[index]
    out = feed_ms(session, 300) + session.text("close")
    finals = [o["text"] for o in out if isinstance(o, dict) and o.get("is_final")]
    assert finals == ["ng"]
    assert kinds(out)[-2:] == ["done", "close:1000"]


def test_manual_interim_then_silence_auto_finalizes() -> None:
    events = words((100, 300, "Hello"), (380, 600, " world"))
    session = ManualSession(params("manual"), ScriptRecognizer(events), "r")
    out = feed_ms(session, 2500)
    assert [(o["is_final"], o["text"]) for o in out if isinstance(o, dict)] == [
        (False, "Hello"),
        (False, "Hello world"),
        (True, "Hello world"),
    ]


def test_manual_max_silence_param_sets_auto_finalization() -> None:
    query = {
        "model": ["ink-whisper"],
        "encoding": ["pcm_s16le"],
        "sample_rate": [str(RATE)],
        "max_silence_duration_secs": ["0.5"],
    }
    p = parse_params("manual", query, {"cartesia-version": "x"})
    session = ManualSession(p, ScriptRecognizer(words((100, 300, "Hi"))), "r")
    out = feed_ms(session, 800)
    assert [o["is_final"] for o in out if isinstance(o, dict)] == [False, True]


def test_manual_queued_commands_are_all_answered_in_order() -> None:
    session = ManualSession(params("manual"), ScriptRecognizer(words((100, 300, "One"))), "r")
    feed_ms(session, 400)
    out = session.text("finalize") + session.text("finalize") + session.text("close")
    assert kinds(out) == ["transcript", "flush_done", "flush_done", "done", "close:1000"]


def test_manual_old_done_command_closes_and_garbage_is_an_error() -> None:
    session = ManualSession(params("manual"), ScriptRecognizer([]), "r")
    assert kinds(session.text('{"type":"close"}')) == ["error"]
    assert kinds(session.text("done")) == ["done", "close:1000"]


# -- params ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "change", "code"),
    [
        ("auto", {"model": "ink-whisper"}, "model_not_found"),
        ("auto", {"model": None}, "model_not_found"),
        ("manual", {"model": "nope"}, "model_not_found"),
        ("auto", {"encoding": "mp3"}, "invalid_encoding"),
        ("auto", {"encoding": None}, "invalid_encoding"),
        ("auto", {"sample_rate": "7999"}, "invalid_sample_rate"),
        ("auto", {"sample_rate": "48001"}, "invalid_sample_rate"),
        ("auto", {"sample_rate": "16k"}, "invalid_sample_rate"),
        ("auto", {"turn_end_threshold": "0.6"}, "invalid_parameter"),
        ("auto", {"turn_eager_end_threshold": "0.3", "turn_end_threshold": "0.3"}, "invalid_turn_config"),
        ("auto", {"turn_end_timeout_ms": "100"}, "invalid_parameter"),
        ("manual", {"language": "english"}, "invalid_language"),
        ("manual", {"model": "ink-whisper", "min_volume": "2"}, "invalid_parameter"),
        ("manual", {"model": "ink-whisper", "max_silence_duration_secs": "x"}, "invalid_parameter"),
    ],
)
def test_invalid_params_are_rejected_with_400(endpoint: str, change: dict[str, Any], code: str) -> None:
    query: dict[str, list[str]] = {"model": ["ink-2"], "encoding": ["pcm_s16le"], "sample_rate": ["16000"]}
    for key, value in change.items():
        if value is None:
            query.pop(key)
        else:
            query[key] = [value]
    with pytest.raises(ParamError) as caught:
        parse_params(endpoint, query, {"cartesia-version": "2026-03-01"})  # type: ignore[arg-type]
    assert caught.value.error_code == code and caught.value.status_code == 400


def test_version_from_header_or_query_and_required() -> None:
    base = {"model": ["ink-2"], "encoding": ["pcm_mulaw"], "sample_rate": ["8000"]}
    assert parse_params("auto", base, {"cartesia-version": "2026-08-14"}).version == "2026-08-14"
    assert parse_params("auto", {**base, "cartesia_version": ["any"]}, {}).version == "any"
    with pytest.raises(ParamError, match="version"):
        parse_params("auto", base, {})


def test_keyterm_limits() -> None:
    base = {"model": ["ink-2"], "encoding": ["pcm_s16le"], "sample_rate": ["16000"], "cartesia_version": ["v"]}
    assert parse_params("auto", {**base, "keyterm": ["a", "b"]}, {}).keyterms == ("a", "b")
    with pytest.raises(ParamError):
        parse_params("auto", {**base, "keyterm": ["k"] * 101}, {})
    with pytest.raises(ParamError):
        parse_params("auto", {**base, "keyterm": ["x" * 1201]}, {})


def test_turn_settings_defaults_are_valid() -> None:
    assert TurnSettings().validated() == TurnSettings()


# -- rate guard and faults ---------------------------------------------------------------------


def test_rate_guard_allows_realtime_and_budget_but_not_more() -> None:
    guard = RateGuard(2000)
    assert not any(guard.add(100, t * 0.1) for t in range(100))  # exactly realtime
    guard = RateGuard(2000)
    results = [guard.add(100, 0.0) for _ in range(25)]  # 2.5 s at once
    assert results.index(True) == 20  # the 21st chunk puts it 2.1 s ahead
    assert guard.max_lead_ms == pytest.approx(2500)


def test_fault_plan_counts_connections_and_is_seeded() -> None:
    plan = FaultPlan()
    plan.add(Fault("drop", at_audio_ms=1000, connections=2, endpoint="auto"))
    plan.add(Fault("delay", delay_ms=50, connections=None))
    assert plan.assign("manual").drop_at_ms is None
    first, second, third = plan.assign("auto"), plan.assign("auto"), plan.assign("auto")
    assert (first.drop_at_ms, second.drop_at_ms, third.drop_at_ms) == (1000, 1000, None)
    assert third.delay_ms == 50 and third.due(5000) is None
    assert first.due(999) is None and first.due(1000) == "drop"

    queued = FaultPlan()
    for at in (100, 200, 300):
        queued.add(Fault("error", at_audio_ms=at, status_code=503))
    assert [queued.assign("auto").error_at_ms for _ in range(4)] == [100, 200, 300, None]

    def draws(seed: int) -> list[float | None]:
        p = FaultPlan()
        p.random_drops(RandomDrops(seed=seed, probability=0.5))
        return [p.assign("auto").drop_at_ms for _ in range(20)]

    assert draws(7) == draws(7) != draws(8)
    assert any(d is None for d in draws(7)) and any(d is not None for d in draws(7))


def test_error_events_are_cartesia_shaped() -> None:
    session = AutoSession(params(), ScriptRecognizer([]), "rid")
    event = session.text("nonsense")[0]
    assert isinstance(event, dict)
    assert set(event) == {"type", "status_code", "title", "message", "error_code", "doc_url", "request_id"}
    assert event["doc_url"].startswith("https://docs.cartesia.ai/")
    orjson.dumps(event)
    assert not session.closed  # a bad command is answered, the socket stays open (see the server's docstring)


def test_sdk_model_ids_dated_snapshots_and_ignored_params() -> None:
    base = {"encoding": ["pcm_s16le"], "sample_rate": ["16000"], "cartesia_version": ["v"]}
    assert parse_params("manual", {**base, "model": ["ink-whisper-2025-06-04"]}, {}).model == "ink-whisper-2025-06-04"
    auto = parse_params("auto", {**base, "model": ["ink-2"], "language": ["fr"], "made_up": ["1"]}, {})
    assert auto.language == "en"  # the auto endpoint has no `language`: ignored like any unknown parameter
    # No invented range on max_silence_duration_secs; silence settings apply to ink-whisper models only.
    whisper = {**base, "model": ["ink-whisper"], "max_silence_duration_secs": ["90"], "min_volume": ["0.5"]}
    assert parse_params("manual", whisper, {}).max_silence_duration_secs == 90.0
    ink2 = parse_params("manual", {**whisper, "model": ["ink-2"]}, {})
    assert ink2.max_silence_duration_secs is None and ink2.min_volume is None


# -- server variants ---------------------------------------------------------------------------


def test_variants_change_only_what_the_docs_leave_open() -> None:
    events = words((200, 400, "Hello"), (480, 700, " there.")) + words((2000, 2300, " How"))
    plain = kinds(feed_ms(AutoSession(params(), ScriptRecognizer(events), "r"), 3500))

    def run(variant: str) -> list[Outgoing]:
        session = AutoSession(params(), ScriptRecognizer(events), "r", variants=frozenset({variant}))  # type: ignore[arg-type]
        return feed_ms(session, 3500)

    assert kinds(run("no_turn_start")) == [k for k in plain if k != "turn.start"]
    repeated = kinds(run("repeat_updates"))
    assert repeated.count("turn.update") == 2 * plain.count("turn.update")
    eager = kinds(run("update_while_eager"))
    assert eager[eager.index("turn.eager_end") + 1] == "turn.update"
    assert texts(run("no_leading_space"), "turn.end") == ["Hello there.", "How"]
    manual = ManualSession(
        params("manual"), ScriptRecognizer(words((100, 300, "One"))), "r", variants=frozenset({"flush_done_first"})
    )
    feed_ms(manual, 400)
    assert kinds(manual.text("finalize")) == ["flush_done", "transcript"]


# -- manual endpoint: word timestamps ------------------------------------------------------------


def word_lists(event: Outgoing) -> tuple[list[str], list[float], list[float]]:
    """The one ``WordTimestamps`` object of a manual `transcript` event (the SDK 4.2 shape)."""
    assert isinstance(event, dict)
    (stamps,) = event["words"]
    assert set(stamps) == {"words", "start", "end"}
    return stamps["words"], stamps["start"], stamps["end"]


def test_manual_transcripts_carry_word_times_duration_and_language() -> None:
    events = words((100, 300, "Hello"), (380, 600, " world"))
    session = ManualSession(params("manual", language="de"), ScriptRecognizer(events), "r")
    out = [o for o in feed_ms(session, 2500) if isinstance(o, dict)]
    assert [word_lists(o) for o in out] == [
        (["Hello"], [0.1], [0.3]),
        (["Hello", "world"], [0.1, 0.38], [0.3, 0.6]),
        (["Hello", "world"], [0.1, 0.38], [0.3, 0.6]),
    ]
    assert all(o["language"] == "de" for o in out)
    final = out[-1]
    assert final["is_final"] is True and final["duration"] == pytest.approx(2.1, abs=0.1)


def test_manual_word_times_restart_after_a_final_and_split_with_the_text() -> None:
    events: list[EngineEvent] = [SpeechStart(100), Text("Insert", 340), Text("i", 380), Text("n", 420), Text("g", 460)]
    script = ScriptRecognizer([*events, SpeechEnd(500), *words((900, 1100, " on"))])
    session = ManualSession(params("manual"), script, "r")
    feed_ms(session, 400)
    first = session.text("finalize")[0]
    assert word_lists(first) == (["Inserti"], [0.1], [0.4])  # the finalize cuts the word where it is
    out = [o for o in feed_ms(session, 900) + session.text("close") if isinstance(o, dict) and o.get("is_final")]
    assert [o["text"] for o in out] == ["ng on"]
    assert word_lists(out[0]) == (["ng", "on"], [0.4, 0.9], [0.5, 1.1])


def test_manual_words_are_the_tokens_of_the_text_on_every_final() -> None:
    # The whisper engine's order: a segment ends, then its text arrives (shared by length in the span).
    events: list[EngineEvent] = [SpeechStart(100), SpeechEnd(700), Text("One two three", 730)]
    session = ManualSession(params("manual"), ScriptRecognizer(events), "r")
    feed_ms(session, 800)
    (final, _flush) = session.text("finalize")
    assert isinstance(final, dict) and final["is_final"]
    tokens, start, end = word_lists(final)
    assert tokens == final["text"].split() == ["One", "two", "three"]
    assert start == [0.1, 0.264, 0.427] and end == [0.264, 0.427, 0.7]  # 600 ms shared 3:3:5


def test_manual_tones_word_times_are_exact() -> None:
    from pipeline.emulator.engines.tones import TonesEngine, synthesize, word_times

    script = ["Alpha bravo", 600, "charlie."]
    session = ManualSession(params("manual"), TonesEngine().recognizer(RATE), "r")
    out = session.audio(synthesize(script, RATE, "pcm_s16le", tail_ms=300)) + session.text("finalize")
    finals = [o for o in out if isinstance(o, dict) and o.get("is_final")]
    tokens = [w for o in finals for w in word_lists(o)[0]]
    starts = [t for o in finals for t in word_lists(o)[1]]
    ends = [t for o in finals for t in word_lists(o)[2]]
    expected = word_times(script)
    assert tokens == [w for w, _, _ in expected]
    # Onsets are found on 1 ms frames under a 5 ms ramp; ends are the word's last symbol boundary.
    assert starts == pytest.approx([s / 1000 for _, s, _ in expected], abs=0.003)
    assert ends == pytest.approx([e / 1000 for _, _, e in expected], abs=0.003)
