"""Tests of pipeline.tools.tail: rendering (live lines, finals, dedup by (session_id, seq), plain mode), the loop."""

from __future__ import annotations

import asyncio
import io
from typing import Any, ClassVar

import aiokafka
import orjson
import pytest

from pipeline.schemas import validate
from pipeline.tools.tail import TerminalOutput, TurnRenderer, tail


class Session:
    """Builds schema-valid stt.turns records of one session with contiguous seqs."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.seq = 0

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        record: dict[str, Any] = {
            "session_id": self.session_id,
            "seq": self.seq,
            "type": kind,
            "endpoint": "auto",
            "request_id": "req-1",
            "audio_ms": 1000 * self.seq,
            "at": 1767225600000 + self.seq,
        }
        record.update(fields)
        validate("turn", record)
        self.seq += 1
        return record


def transcript(session_id: str, seq: int, kind: str, turn: int, text: str) -> dict[str, Any]:
    record = {
        "kind": kind,
        "session_id": session_id,
        "seq": seq,
        "turn": turn,
        "transcript": text,
        "status": "complete",
        "audio_ms": 4000,
        "at": 1767225604000,
    }
    validate("transcript", record)
    return record


def test_live_line_updates_in_place_then_final() -> None:
    r = TurnRenderer()
    s = Session("call-1")
    assert r.feed(s.event("session.start")) == []
    assert r.feed(s.event("turn.start", turn=0)) == []
    assert r.live_lines == ["[call-1] turn 0 ... "]
    assert r.feed(s.event("turn.update", turn=0, transcript="Hello,")) == []
    assert r.live_lines == ["[call-1] turn 0 ... Hello,"]
    r.feed(s.event("turn.eager_end", turn=0, transcript="Hello, world"))
    assert r.live_lines == ["[call-1] turn 0 ... Hello, world [end?]"]
    r.feed(s.event("turn.resume", turn=0))
    assert r.live_lines == ["[call-1] turn 0 ... Hello, world"]
    assert r.feed(s.event("turn.end", turn=0, transcript=" Hello, world.")) == ["[call-1] turn 0: Hello, world."]
    assert r.live_lines == []
    assert r.feed(s.event("session.end", status="complete")) == [
        "[call-1] session end: complete, 1 turn, 6.0 s of audio"
    ]
    assert r.sessions_ended == 1


def test_one_live_line_per_session() -> None:
    r = TurnRenderer()
    a, b = Session("a"), Session("b")
    r.feed(a.event("turn.update", turn=0, transcript="one"))
    r.feed(b.event("turn.update", turn=3, transcript="two"))
    r.feed(a.event("turn.update", turn=0, transcript="one more"))
    assert r.live_lines == ["[a] turn 0 ... one more", "[b] turn 3 ... two"]
    assert r.feed(a.event("turn.end", turn=0, transcript="one more.")) == ["[a] turn 0: one more."]
    assert r.live_lines == ["[b] turn 3 ... two"]


def test_new_turn_replaces_the_live_text() -> None:
    r = TurnRenderer()
    s = Session("s")
    r.feed(s.event("turn.update", turn=0, transcript="first"))
    r.feed(s.event("turn.end", turn=0, transcript="first."))
    r.feed(s.event("turn.start", turn=1))
    assert r.live_lines == ["[s] turn 1 ... "]
    # A late interim of a turn that already ended does not reopen it.
    r.feed(s.event("turn.update", turn=0, transcript="first"))
    assert r.live_lines == ["[s] turn 1 ... "]


def test_dedup_by_session_and_seq() -> None:
    r = TurnRenderer()
    a, b = Session("a"), Session("b")
    end_a = a.event("turn.end", turn=0, transcript="Hi.")
    end_b = b.event("turn.end", turn=0, transcript="Yo.")
    assert r.feed(end_a) == ["[a] turn 0: Hi."]
    assert r.feed(end_b) == ["[b] turn 0: Yo."]
    assert r.feed(dict(end_a)) == []
    assert r.duplicates == 1
    later = a.event("session.end", status="complete")
    error = a.event("session.error", error={"status_code": 500, "title": "x", "message": "y", "retryable": True})
    assert r.feed(error) != []
    assert r.feed(later) != []
    assert r.feed(error) == []
    assert r.feed(later) == []
    assert r.sessions_ended == 1


def test_plain_mode_prints_only_finals() -> None:
    r = TurnRenderer(live=False)
    s = Session("s")
    out: list[str] = []
    out += r.feed(s.event("session.start"))
    out += r.feed(s.event("turn.start", turn=0))
    out += r.feed(s.event("turn.update", turn=0, transcript="Hel"))
    out += r.feed(s.event("turn.eager_end", turn=0, transcript="Hello"))
    assert r.live_lines == []
    out += r.feed(s.event("turn.end", turn=0, transcript="Hello."))
    error = {"status_code": 429, "title": "Too many requests", "message": "Limit", "error_code": "limited"}
    out += r.feed(s.event("session.error", error=error | {"retryable": False}))
    out += r.feed(s.event("session.end", status="failed"))
    assert out == [
        "[s] turn 0: Hello.",
        "[s] error: 429 Too many requests: Limit (limited)",
        "[s] session end: failed, 1 turn, 6.0 s of audio",
    ]
    assert r.live_lines == []


def test_turn_count_only_for_sessions_followed_from_the_start() -> None:
    r = TurnRenderer()
    s = Session("late")
    s.event("session.start")
    r.feed(s.event("turn.end", turn=0, transcript="Hi."))
    assert r.feed(s.event("session.end", status="truncated")) == ["[late] session end: truncated, 2.0 s of audio"]


def test_session_filter() -> None:
    r = TurnRenderer(sessions=["keep"], session_prefix="demo-")
    for sid in ("keep", "demo-1", "other"):
        r.feed(Session(sid).event("session.end", status="complete"))
    assert r.ended == ["keep", "demo-1"]


def test_long_live_lines_are_cut_to_the_width() -> None:
    r = TurnRenderer(width=40)
    r.feed(Session("s").event("turn.update", turn=0, transcript="word " * 30 + "latest"))
    (line,) = r.live_lines
    assert len(line) < 40
    assert line.startswith("[s] turn 0 ... ...")
    assert line.endswith("latest")


def test_transcripts_topic() -> None:
    r = TurnRenderer()
    assert r.feed(transcript("s", 0, "turn", 0, "Hello. ")) == ["[s] turn 0: Hello."]
    assert r.feed(transcript("s", 1, "session", 1, "Hello. ")) == ["[s] transcript (complete, 1 turn): Hello."]
    assert r.feed(transcript("s", 1, "session", 1, "Hello. ")) == []
    assert r.sessions_ended == 1
    only = TurnRenderer(sessions_only=True)
    assert only.feed(transcript("s", 0, "turn", 0, "Hello.")) == []
    assert only.feed(transcript("s", 1, "session", 1, "Hello.")) != []


def test_terminal_output_redraws_live_lines_in_place() -> None:
    stream = io.StringIO()
    out = TerminalOutput(stream, live=True)
    out.show([], ["[a] turn 0 ... hi"])
    out.show([], ["[a] turn 0 ... hi there", "[b] turn 0 ... yo"])
    out.show([], ["[a] turn 0 ... hi there", "[b] turn 0 ... yo"])
    out.show(["[a] turn 0: hi there."], ["[b] turn 0 ... yo"])
    out.close()
    assert stream.getvalue() == (
        "[a] turn 0 ... hi"
        "\r\x1b[K[a] turn 0 ... hi there\n[b] turn 0 ... yo"
        "\r\x1b[K\x1b[A\r\x1b[K[a] turn 0: hi there.\n[b] turn 0 ... yo"
        "\n"
    )


def test_terminal_output_plain() -> None:
    stream = io.StringIO()
    out = TerminalOutput(stream, live=False)
    out.show([], ["[a] turn 0 ... hi"])
    out.show(["[a] turn 0: hi."], [])
    out.close()
    assert stream.getvalue() == "[a] turn 0: hi.\n"


class FakeMessage:
    def __init__(self, value: bytes, offset: int) -> None:
        self.value = value
        self.partition = 0
        self.offset = offset


class FakeConsumer:
    """Stands in for AIOKafkaConsumer: hands out the given values one per getmany()."""

    values: ClassVar[list[bytes]] = []
    config: ClassVar[dict[str, Any]] = {}

    def __init__(self, *topics: str, **config: Any) -> None:
        FakeConsumer.config = {"topics": topics, **config}
        self._pending = list(enumerate(FakeConsumer.values))
        self.stopped = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    async def getmany(self, timeout_ms: int) -> dict[str, list[FakeMessage]]:
        if not self._pending:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        offset, value = self._pending.pop(0)
        return {"tp": [FakeMessage(value, offset)]}


async def test_tail_until_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = Session("a"), Session("b")
    FakeConsumer.values = [
        orjson.dumps(a.event("turn.end", turn=0, transcript="Hi.")),
        b"not json",
        orjson.dumps(a.event("session.end", status="complete")),
        orjson.dumps(b.event("session.end", status="complete")),
        orjson.dumps(b.event("turn.end", turn=0, transcript="never shown")),
    ]
    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", FakeConsumer)
    stream, errors = io.StringIO(), io.StringIO()
    reached = await tail(
        "k:1",
        "stt.turns",
        renderer=TurnRenderer(live=False),
        output=TerminalOutput(stream, live=False),
        from_beginning=True,
        until_sessions=2,
        errors=errors,
    )
    assert reached
    assert FakeConsumer.config["topics"] == ("stt.turns",)
    assert FakeConsumer.config["group_id"] is None
    assert FakeConsumer.config["isolation_level"] == "read_committed"
    assert FakeConsumer.config["auto_offset_reset"] == "earliest"
    assert stream.getvalue().splitlines() == [
        "[a] turn 0: Hi.",
        "[a] session end: complete, 1 turn, 1.0 s of audio",
        "[b] session end: complete, 0 turns, 0.0 s of audio",
    ]
    assert "stt.turns/0@1" in errors.getvalue()


async def test_tail_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeConsumer.values = []
    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", FakeConsumer)
    output = TerminalOutput(io.StringIO(), live=True)
    renderer = TurnRenderer()
    assert not await tail("k:1", "t", renderer=renderer, output=output, until_sessions=1, timeout_s=0.3)
    assert FakeConsumer.config["auto_offset_reset"] == "latest"
    assert await tail("k:1", "t", renderer=renderer, output=output, timeout_s=0.3)
