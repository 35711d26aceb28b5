"""`stt-pipeline tail`: follow `stt.turns` (or `stt.transcripts`) and render conversations in a terminal.

:class:`TurnRenderer` is pure: it takes decoded records and returns the lines to print, plus one live
line per session with a turn in progress. :class:`TerminalOutput` draws those, redrawing the live
lines in place on a terminal. :func:`tail` feeds them from a group-less ``read_committed`` consumer of
:mod:`pipeline.client`.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TextIO

if TYPE_CHECKING:
    from pipeline.settings import Settings

ERASE_LINE = "\r\x1b[K"
CURSOR_UP = "\x1b[A"


@dataclass(slots=True)
class _SeenSeqs:
    """The seqs seen for one session: all below ``contiguous``, plus those in ``ahead``."""

    contiguous: int = 0
    ahead: set[int] = field(default_factory=set)

    def add(self, seq: int) -> bool:
        """Record ``seq``; False if it was seen before."""
        if seq < self.contiguous or seq in self.ahead:
            return False
        self.ahead.add(seq)
        while self.contiguous in self.ahead:
            self.ahead.discard(self.contiguous)
            self.contiguous += 1
        return True


@dataclass(slots=True)
class _SessionView:
    seen: _SeenSeqs = field(default_factory=_SeenSeqs)
    live_turn: int | None = None
    live_text: str = ""
    eager: bool = False
    last_ended_turn: int = -1
    turns: int = 0
    # Turn counts are only shown for sessions followed from their first record.
    from_start: bool = False


class TurnRenderer:
    """Turn events and transcript records → terminal lines, deduplicated by ``(session_id, seq)``.

    :param live: keep a live line per session for turns in progress; without it only finals, errors
        and session ends produce output.
    :param sessions: show only these session ids (with ``session_prefix``: or ids with that prefix).
    :param sessions_only: for transcript records, show only whole-session transcripts.
    :param width: truncate live lines to this many columns (they are redrawn in place, so must not wrap).
    """

    def __init__(
        self,
        *,
        live: bool = True,
        sessions: Collection[str] | None = None,
        session_prefix: str | None = None,
        sessions_only: bool = False,
        width: int | None = None,
    ) -> None:
        self.live = live
        self.sessions = frozenset(sessions) if sessions else None
        self.session_prefix = session_prefix
        self.sessions_only = sessions_only
        self.width = width
        self.duplicates = 0
        self.ended: list[str] = []
        self._ended_set: set[str] = set()
        self._views: dict[str, _SessionView] = {}

    @property
    def sessions_ended(self) -> int:
        """Sessions seen ending (``session.end``, or a ``kind=session`` transcript)."""
        return len(self.ended)

    @property
    def live_lines(self) -> list[str]:
        """The in-place lines, one per session with a turn in progress, in order of first appearance."""
        return [
            self._fit(f"[{session_id}] turn {view.live_turn} ... ", view.live_text, " [end?]" if view.eager else "")
            for session_id, view in self._views.items()
            if view.live_turn is not None
        ]

    def wants(self, session_id: str) -> bool:
        if self.sessions is None and self.session_prefix is None:
            return True
        if self.sessions is not None and session_id in self.sessions:
            return True
        return self.session_prefix is not None and session_id.startswith(self.session_prefix)

    def feed(self, record: Mapping[str, Any]) -> list[str]:
        """Lines to print (above the live lines) for one decoded record."""
        session_id = record.get("session_id")
        if not isinstance(session_id, str) or not self.wants(session_id):
            return []
        seq = record.get("seq")
        view = self._views.get(session_id)
        if view is None:
            view = self._views[session_id] = _SessionView(from_start=seq == 0)
        if isinstance(seq, int) and not view.seen.add(seq):
            self.duplicates += 1
            return []
        if "kind" in record:
            return self._transcript(session_id, view, record)
        return self._event(session_id, view, record)

    def _event(self, session_id: str, view: _SessionView, record: Mapping[str, Any]) -> list[str]:
        kind = record.get("type")
        turn = record.get("turn")
        text = _display(record.get("transcript"))
        tag = f"[{session_id}]"
        if kind in ("turn.start", "turn.update", "turn.eager_end", "turn.resume"):
            if self.live and isinstance(turn, int) and turn > view.last_ended_turn:
                if turn != view.live_turn:
                    view.live_turn, view.live_text = turn, ""
                if "transcript" in record:
                    view.live_text = text
                view.eager = kind == "turn.eager_end"
            return []
        if kind == "turn.end":
            if isinstance(turn, int):
                view.last_ended_turn = max(view.last_ended_turn, turn)
            view.live_turn = None
            view.turns += 1
            return [f"{tag} turn {turn}: {text}"]
        if kind == "session.error":
            return [f"{tag} error: {_error_text(record.get('error'))}"]
        if kind == "session.end":
            view.live_turn = None
            self._ended(session_id)
            audio = f"{_seconds(record.get('audio_ms'))} of audio"
            turns = f"{_turns(view.turns)}, " if view.from_start else ""
            return [f"{tag} session end: {record.get('status', '?')}, {turns}{audio}"]
        return []

    def _transcript(self, session_id: str, view: _SessionView, record: Mapping[str, Any]) -> list[str]:
        tag = f"[{session_id}]"
        text = _display(record.get("transcript"))
        if record.get("kind") == "session":
            self._ended(session_id)
            turns = _turns(record.get("turn"))
            return [f"{tag} transcript ({record.get('status', '?')}, {turns}): {text}"]
        if self.sessions_only:
            return []
        return [f"{tag} turn {record.get('turn')}: {text}"]

    def _ended(self, session_id: str) -> None:
        if session_id not in self._ended_set:
            self._ended_set.add(session_id)
            self.ended.append(session_id)

    def _fit(self, prefix: str, text: str, marker: str) -> str:
        line = prefix + text + marker
        if self.width is None or len(line) < self.width:
            return line
        room = self.width - 1 - len(prefix) - len(marker) - 3
        if room <= 0:
            return line[: self.width - 1]
        return prefix + "..." + text[-room:] + marker


def _display(text: Any) -> str:
    """A transcript for the terminal: verbatim on the wire, trimmed and on one line here."""
    return " ".join(str(text).split()) if text is not None else ""


def _turns(n: Any) -> str:
    return "1 turn" if n == 1 else f"{n} turns"


def _seconds(ms: Any) -> str:
    return f"{ms / 1000.0:.1f} s" if isinstance(ms, int | float) else "? s"


def _error_text(error: Any) -> str:
    if not isinstance(error, Mapping):
        return "unknown error"
    parts = [str(error.get("status_code") or ""), str(error.get("title") or "")]
    head = " ".join(p for p in parts if p)
    message = str(error.get("message") or "")
    text = f"{head}: {message}" if head and message else head or message or "unknown error"
    code = error.get("error_code")
    flags = [str(code)] if code else []
    if error.get("retryable"):
        flags.append("retryable")
    return f"{text} ({', '.join(flags)})" if flags else text


class TerminalOutput:
    """Prints finals as plain lines and, in live mode, keeps the live lines redrawn in place below them."""

    def __init__(self, stream: TextIO, *, live: bool) -> None:
        self.stream = stream
        self.live = live
        self._drawn: list[str] = []

    def show(self, finals: list[str], live_lines: list[str]) -> None:
        if not self.live:
            if finals:
                self.stream.write("".join(line + "\n" for line in finals))
                self.stream.flush()
            return
        if not finals and live_lines == self._drawn:
            return
        # The cursor sits at the end of the last live line: clear upwards to the first one.
        out = ERASE_LINE + (CURSOR_UP + ERASE_LINE) * (len(self._drawn) - 1) if self._drawn else ""
        out += "".join(line + "\n" for line in finals)
        out += "\n".join(live_lines)
        self._drawn = list(live_lines)
        self.stream.write(out)
        self.stream.flush()

    def close(self) -> None:
        """Leave the cursor on a fresh line (the live lines of unfinished turns stay visible)."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = []


async def tail(
    bootstrap: str | Settings,
    topic: str,
    *,
    renderer: TurnRenderer,
    output: TerminalOutput,
    from_beginning: bool = False,
    until_sessions: int | None = None,
    timeout_s: float | None = None,
    stop: asyncio.Event | None = None,
    errors: TextIO = sys.stderr,
    records: Literal["turns", "transcripts"] | None = None,
) -> bool:
    """Render ``topic`` until ``until_sessions`` sessions ended, ``timeout_s`` passed or ``stop`` is set.

    ``records``: what the topic holds; by default transcripts if ``topic`` is the settings' transcripts
    topic, else turn events. A record that breaks the contract is skipped with a warning.
    Returns False only if ``until_sessions`` was given and not reached.
    """
    from pipeline.client import InvalidRecord, TranscriptsConsumer, TurnsConsumer
    from pipeline.kafka.clients import connection

    settings = connection(bootstrap)
    if records is None:
        records = "transcripts" if topic == settings.transcripts_topic else "turns"

    def skipped(invalid: InvalidRecord) -> None:
        warning = f"tail: skipping a record that breaks the contract at {invalid}"
        if output.live:
            output.show([warning], renderer.live_lines)
        else:
            errors.write(warning + "\n")

    kind = TranscriptsConsumer if records == "transcripts" else TurnsConsumer
    consumer = kind.from_settings(
        settings, topic=topic, from_beginning=from_beginning, on_invalid=skipped, role="tail"
    )
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    await consumer.start()
    try:
        while True:
            if until_sessions is not None and renderer.sessions_ended >= until_sessions:
                return True
            if stop is not None and stop.is_set():
                break
            if deadline is not None and loop.time() >= deadline:
                break
            for record in await consumer.getmany(timeout_ms=200):
                output.show(renderer.feed(record.to_dict()), renderer.live_lines)
        return until_sessions is None or renderer.sessions_ended >= until_sessions
    finally:
        output.close()
        await consumer.stop()


def terminal_width(stream: TextIO) -> int | None:
    """Columns of the terminal behind ``stream``, or None if it is not a terminal."""
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    return shutil.get_terminal_size().columns
