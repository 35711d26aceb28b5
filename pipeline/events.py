"""STT provider events → normalized turn events, and verbatim transcript assembly (sans-I/O).

Both Cartesia realtime endpoints are mapped onto one turn model, :class:`TurnEvent`:

- ``/stt/turns/websocket`` (auto): :class:`AutoNormalizer` follows the server's own turn events.
- ``/stt/websocket`` (manual): :class:`ManualNormalizer` builds turns from transcript deltas, the
  client's ``finalize`` commands and the server's ``flush_done``/``done``.

Text is never reformatted: a turn's transcript is exactly the provider's text (auto: the latest
cumulative ``transcript``; manual: the verbatim concatenation of ``is_final`` deltas), and the session
transcript is the exact concatenation of the turn transcripts. Nothing is stripped, and no separator
is added.

Cases the protocol leaves open (UNCONFIRMED in the protocol fact sheet, or plain protocol violations)
are handled as documented on each normalizer and counted in its ``anomalies`` counter.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from pipeline.contract import ProviderErrorInfo, WordTiming
from pipeline.errors import ProviderError

TurnEventType = Literal[
    "turn.start",
    "turn.update",
    "turn.eager_end",
    "turn.resume",
    "turn.end",
    "session.error",
]


@dataclass(frozen=True, slots=True)
class TurnEvent:
    """A normalized event.

    :ivar type: the event type.
    :ivar turn: the turn index (from the normalizer's ``first_turn``, 0 by default) on ``turn.*``
        events; None on ``session.error``.
    :ivar transcript: the turn's whole text so far, verbatim, on ``turn.update``, ``turn.eager_end``
        and ``turn.end``; None otherwise.
    :ivar request_id: the provider connection's request id, when known.
    :ivar error: on ``session.error``: the provider's error, read by
        :meth:`pipeline.errors.ProviderError.from_event` (so ``retryable`` follows the one retry rule).
        Its text is the provider's, unscrubbed.
    :ivar words: manual endpoint, on ``turn.update``/``turn.end``, when the provider sent ``words``: the
        words of ``transcript`` with times in ms from the start of the *connection's* audio (the
        session maps them to session audio time).
    :ivar duration_ms: manual endpoint, when the provider sent ``duration``: the audio behind
        ``transcript``, summed over its chunks, in ms.
    :ivar language: manual endpoint: the ``language`` of the turn's latest transcript chunk, if sent.
    """

    type: TurnEventType
    turn: int | None = None
    transcript: str | None = None
    request_id: str | None = None
    error: ProviderErrorInfo | None = None
    words: tuple[WordTiming, ...] | None = None
    duration_ms: float | None = None
    language: str | None = None


def _finite(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


def _timing(word: object, start: object, end: object) -> WordTiming | None:
    s, e = _finite(start), _finite(end)
    if not isinstance(word, str) or not word or s is None or e is None or e < s:
        return None
    return WordTiming(word, round(s * 1000.0, 3), round(e * 1000.0, 3))


def parse_words(value: object) -> list[WordTiming] | None:
    """The ``words`` of a manual `transcript` event, times in ms of the connection's audio; None if malformed.

    Read in both published shapes: the SDK's (4.2), a list of ``WordTimestamps`` objects each holding
    parallel lists ``words``, ``start`` and ``end`` (seconds); and the docs' older one, a list of
    ``{"word", "start", "end"}`` objects. Any unreadable part makes the whole value malformed.
    """
    if not isinstance(value, list):
        return None
    out: list[WordTiming] = []
    for item in value:
        if not isinstance(item, Mapping):
            return None
        if "words" in item:
            words, starts, ends = item.get("words"), item.get("start"), item.get("end")
            if not (isinstance(words, list) and isinstance(starts, list) and isinstance(ends, list)):
                return None
            if not len(words) == len(starts) == len(ends):
                return None
            triples = list(zip(words, starts, ends, strict=True))
        else:
            triples = [(item.get("word"), item.get("start"), item.get("end"))]
        for word, start, end in triples:
            timing = _timing(word, start, end)
            if timing is None:
                return None
            out.append(timing)
    return out


def _error_event(event: Mapping[str, Any], request_id: str | None) -> TurnEvent:
    """Map a provider ``error`` event to ``session.error``."""
    return TurnEvent(
        "session.error", request_id=request_id, error=ProviderErrorInfo.from_error(ProviderError.from_event(event))
    )


class AutoState(Enum):
    """Turn state of the auto endpoint (PROTOCOL-FACTS section 1)."""

    IDLE = "idle"
    SPEAKING = "speaking"
    EAGER_ENDED = "eager_ended"


class AutoNormalizer:
    """Normalizes ``/stt/turns/websocket`` events.

    Legal transitions: Idle →turn.start→ Speaking →turn.eager_end→ EagerEnded →turn.resume→ Speaking;
    Speaking or EagerEnded →turn.end→ Idle; ``turn.update`` while Speaking. Each ``turn.update``,
    ``turn.eager_end`` and ``turn.end`` REPLACES the turn's transcript (it is cumulative).

    Other cases, each counted in :attr:`anomalies` under the given key:

    - ``turn.update``/``turn.eager_end``/``turn.end`` while Idle (``"missing_start"``): a
      ``turn.start`` is synthesized first.
    - ``turn.update`` that would not change the turn's text, e.g. identical consecutive updates
      (``"unchanged_update"``): dropped.
    - ``turn.update`` while EagerEnded (``"update_while_eager_ended"``): an implicit resume;
      ``turn.resume`` is emitted, then the update (unless it does not change the text).
    - ``turn.eager_end`` while EagerEnded (``"repeated_eager_end"``): emitted again if its text
      differs (the user may be done with more words), else dropped.
    - ``turn.resume`` while not EagerEnded (``"stray_resume"``): ignored.
    - ``turn.start`` while a turn is open (``"repeated_start"``): ignored; the turn goes on. This is
      also what keeps one turn index when a reconnect replays the open turn's audio.
    - ``turn.update``/``turn.eager_end`` without a string ``transcript`` (``"missing_transcript"``):
      ignored; ``turn.end`` without one ends the turn with its last known text (``""`` if none).

    ``connected`` records the request id and emits nothing; ``error`` emits ``session.error`` and
    leaves the turn state alone; unknown types are ignored and counted in :attr:`unknown_events`.
    """

    def __init__(self, *, first_turn: int = 0) -> None:
        """:param first_turn: index of the first turn (continues numbering after a restart)."""
        if first_turn < 0:
            raise ValueError(f"first_turn must be >= 0, got {first_turn}")
        self._state = AutoState.IDLE
        self._turn = first_turn
        self._transcript: str | None = None
        self._request_id: str | None = None
        self.unknown_events = 0
        """Number of events of unknown type ignored."""
        self.anomalies: Counter[str] = Counter()
        """Tolerated out-of-protocol events, by kind (see the class docstring)."""

    @property
    def state(self) -> AutoState:
        """The current turn state."""
        return self._state

    @property
    def turn(self) -> int:
        """Index of the open turn, or of the next turn when Idle."""
        return self._turn

    @property
    def transcript(self) -> str | None:
        """The open turn's latest text; None when Idle or before the turn's first text."""
        return self._transcript

    @property
    def request_id(self) -> str | None:
        """The last request id seen from the provider."""
        return self._request_id

    def feed(self, event: Mapping[str, Any]) -> list[TurnEvent]:
        """Consume one provider event (decoded JSON); return the normalized events it produces."""
        rid = event.get("request_id")
        if isinstance(rid, str):
            self._request_id = rid
        kind = event.get("type")
        if kind == "connected":
            return []
        if kind == "error":
            return [_error_event(event, self._request_id)]
        if kind == "turn.start":
            return self._on_start()
        if kind == "turn.resume":
            return self._on_resume()
        if kind in ("turn.update", "turn.eager_end", "turn.end"):
            text = event.get("transcript")
            if not isinstance(text, str):
                self.anomalies["missing_transcript"] += 1
                if kind != "turn.end":
                    return []
                text = self._transcript or ""
            if kind == "turn.update":
                return self._on_update(text)
            if kind == "turn.eager_end":
                return self._on_eager_end(text)
            return self._on_end(text)
        self.unknown_events += 1
        return []

    def _on_start(self) -> list[TurnEvent]:
        if self._state is not AutoState.IDLE:
            self.anomalies["repeated_start"] += 1
            return []
        return self._start()

    def _on_update(self, text: str) -> list[TurnEvent]:
        out = self._ensure_speaking()
        if text == self._transcript:
            self.anomalies["unchanged_update"] += 1
            return out
        self._transcript = text
        out.append(self._event("turn.update", text))
        return out

    def _on_eager_end(self, text: str) -> list[TurnEvent]:
        if self._state is AutoState.EAGER_ENDED:
            self.anomalies["repeated_eager_end"] += 1
            if text == self._transcript:
                return []
        out = self._open_if_idle()
        self._state = AutoState.EAGER_ENDED
        self._transcript = text
        out.append(self._event("turn.eager_end", text))
        return out

    def _on_resume(self) -> list[TurnEvent]:
        if self._state is not AutoState.EAGER_ENDED:
            self.anomalies["stray_resume"] += 1
            return []
        self._state = AutoState.SPEAKING
        return [self._event("turn.resume")]

    def _on_end(self, text: str) -> list[TurnEvent]:
        out = self._open_if_idle()
        out.append(self._event("turn.end", text))
        self._state = AutoState.IDLE
        self._transcript = None
        self._turn += 1
        return out

    def _start(self) -> list[TurnEvent]:
        self._state = AutoState.SPEAKING
        self._transcript = None
        return [self._event("turn.start")]

    def _open_if_idle(self) -> list[TurnEvent]:
        """Synthesize ``turn.start`` if no turn is open."""
        if self._state is not AutoState.IDLE:
            return []
        self.anomalies["missing_start"] += 1
        return self._start()

    def _ensure_speaking(self) -> list[TurnEvent]:
        """Get to Speaking before an update: synthesize a start, or resume implicitly."""
        if self._state is AutoState.EAGER_ENDED:
            self.anomalies["update_while_eager_ended"] += 1
            self._state = AutoState.SPEAKING
            return [self._event("turn.resume")]
        return self._open_if_idle()

    def _event(self, kind: TurnEventType, transcript: str | None = None) -> TurnEvent:
        return TurnEvent(kind, turn=self._turn, transcript=transcript, request_id=self._request_id)


class ManualNormalizer:
    """Builds turns from ``/stt/websocket`` events.

    - A turn starts (``turn.start``) at the first non-empty text, interim or final.
    - Each ``is_final: true`` delta is appended verbatim to the turn's final text. An interim
      (``is_final`` not true) is the pending text since the last final: the visible text is the
      finals followed by the latest interim. ``turn.update`` carries the visible text and is emitted
      whenever a transcript event changes it (so a final that merely confirms the displayed interim
      emits no update).
    - With a ``finalize`` outstanding (:meth:`finalize_sent`), finals do not end the turn; each
      ``flush_done`` consumes one outstanding finalize and ends the open turn with its final text.
      Without one, a final is the server's silence auto-finalization and ends the turn right after
      it is appended.
    - ``done`` ends any open turn, then :attr:`finished` is True.

    The order of ``flush_done`` and the final of the same finalize is UNCONFIRMED, so both orders keep
    every final exactly once: final first → it is appended and ``flush_done`` ends the turn;
    ``flush_done`` first → the final then arrives with no finalize outstanding and ends the turn as an
    auto-finalization. Choices, each counted in :attr:`anomalies` under the given key:

    - ``flush_done`` while the open turn has no final text yet, only interim text
      (``"flush_done_before_final"``): the finalize is consumed but the turn stays open, since its
      final is presumably still on the way (it will end the turn as above). A turn that never gets
      final text ends at ``done`` with ``""``.
    - ``flush_done`` with no finalize outstanding (``"unexpected_flush_done"``): ignored.
    - A transcript event without a string ``text`` (``"missing_text"``): handled as ``""``.
    - A transcript event whose ``words`` cannot be read (``"bad_words"``): handled as if it had none.

    Word timestamps, ``duration`` and ``language`` (all optional in the protocol) are carried on the
    events that carry text: ``turn.end`` has the words of the finals (in order) and the sum of their
    durations; ``turn.update`` those of the visible text (finals, then the latest interim). ``words``
    is present once any chunk of the turn sent it, ``duration_ms`` likewise; ``language`` is the latest
    chunk's. Word times stay in the connection's clock (ms from its first audio).

    A ``flush_done`` with no open turn ends nothing. ``error`` emits ``session.error``; other types
    (``connected`` included: the manual endpoint does not send it) are counted in
    :attr:`unknown_events` and ignored.
    """

    def __init__(self, *, first_turn: int = 0) -> None:
        """:param first_turn: index of the first turn (continues numbering after a restart)."""
        if first_turn < 0:
            raise ValueError(f"first_turn must be >= 0, got {first_turn}")
        self._turn = first_turn
        self._open = False
        self._finals = ""
        self._interim = ""
        self._outstanding = 0
        self._finished = False
        self._request_id: str | None = None
        self._reset_details()
        self.unknown_events = 0
        """Number of events of unknown type ignored."""
        self.anomalies: Counter[str] = Counter()
        """Tolerated out-of-protocol events, by kind (see the class docstring)."""

    def _reset_details(self) -> None:
        self._final_words: list[WordTiming] = []
        self._interim_words: list[WordTiming] = []
        self._has_words = False
        self._final_duration = 0.0
        self._interim_duration = 0.0
        self._has_duration = False
        self._language: str | None = None

    @property
    def turn(self) -> int:
        """Index of the open turn, or of the next turn when none is open."""
        return self._turn

    @property
    def turn_open(self) -> bool:
        """Whether a turn is open."""
        return self._open

    @property
    def final_text(self) -> str:
        """The open turn's final text so far (``""`` when no turn is open)."""
        return self._finals

    @property
    def outstanding_finalizes(self) -> int:
        """Finalize commands sent and not yet acknowledged by ``flush_done``."""
        return self._outstanding

    @property
    def finished(self) -> bool:
        """True once ``done`` was received."""
        return self._finished

    @property
    def request_id(self) -> str | None:
        """The last request id seen from the provider."""
        return self._request_id

    def finalize_sent(self) -> None:
        """Record that the client sent ``finalize``."""
        self._outstanding += 1

    def feed(self, event: Mapping[str, Any]) -> list[TurnEvent]:
        """Consume one provider event (decoded JSON); return the normalized events it produces."""
        rid = event.get("request_id")
        if isinstance(rid, str):
            self._request_id = rid
        kind = event.get("type")
        if kind == "transcript":
            text = event.get("text")
            if not isinstance(text, str):
                self.anomalies["missing_text"] += 1
                text = ""
            words = None if event.get("words") is None else parse_words(event["words"])
            if words is None and event.get("words") is not None:
                self.anomalies["bad_words"] += 1
            duration = _finite(event.get("duration"))
            language = event.get("language")
            language = language if isinstance(language, str) and language else None
            if event.get("is_final") is True:
                return self._final(text, words, duration, language)
            return self._interim_text(text, words, duration, language)
        if kind == "flush_done":
            if self._outstanding == 0:
                self.anomalies["unexpected_flush_done"] += 1
                return []
            self._outstanding -= 1
            if not self._open:
                return []
            if not self._finals:
                self.anomalies["flush_done_before_final"] += 1
                return []
            return self._end()
        if kind == "done":
            self._finished = True
            return self._end() if self._open else []
        if kind == "error":
            return [_error_event(event, self._request_id)]
        self.unknown_events += 1
        return []

    def _final(
        self, text: str, words: list[WordTiming] | None, duration: float | None, language: str | None
    ) -> list[TurnEvent]:
        out = self._open_if_text(text)
        if not self._open:
            return out
        before = self._finals + self._interim
        self._finals += text
        self._interim = ""
        self._final_words += words or []
        self._interim_words = []
        self._has_words |= words is not None
        self._final_duration += duration or 0.0
        self._interim_duration = 0.0
        self._has_duration |= duration is not None
        self._language = language or self._language
        if self._finals != before:
            out.append(self._event("turn.update", self._finals))
        if self._outstanding == 0:
            out.extend(self._end())
        return out

    def _interim_text(
        self, text: str, words: list[WordTiming] | None, duration: float | None, language: str | None
    ) -> list[TurnEvent]:
        out = self._open_if_text(text)
        if not self._open:
            return out
        before = self._finals + self._interim
        self._interim = text
        self._interim_words = words or []
        self._has_words |= words is not None
        self._interim_duration = duration or 0.0
        self._has_duration |= duration is not None
        self._language = language or self._language
        if self._finals + text != before:
            out.append(self._event("turn.update", self._finals + text))
        return out

    def _open_if_text(self, text: str) -> list[TurnEvent]:
        if self._open or not text:
            return []
        self._open = True
        return [self._event("turn.start")]

    def _end(self) -> list[TurnEvent]:
        out = [self._event("turn.end", self._finals)]
        self._open = False
        self._finals = ""
        self._interim = ""
        self._reset_details()
        self._turn += 1
        return out

    def _event(self, kind: TurnEventType, transcript: str | None = None) -> TurnEvent:
        if transcript is None:
            return TurnEvent(kind, turn=self._turn, request_id=self._request_id)
        interim = kind != "turn.end"
        words = self._final_words + (self._interim_words if interim else [])
        duration = self._final_duration + (self._interim_duration if interim else 0.0)
        return TurnEvent(
            kind,
            turn=self._turn,
            transcript=transcript,
            request_id=self._request_id,
            words=tuple(words) if self._has_words else None,
            duration_ms=round(duration * 1000.0, 3) if self._has_duration else None,
            language=self._language,
        )


class TranscriptAssembler:
    """Collects final turn transcripts in order and joins them verbatim."""

    def __init__(self, *, first_turn: int = 0) -> None:
        """:param first_turn: index of the first turn to be added."""
        if first_turn < 0:
            raise ValueError(f"first_turn must be >= 0, got {first_turn}")
        self._first = first_turn
        self._turns: list[str] = []

    def add_turn(self, index: int, transcript: str) -> None:
        """Add the ``turn.end`` transcript of turn ``index``.

        :raises ValueError: unless ``index`` is the next turn index.
        """
        expected = self._first + len(self._turns)
        if index != expected:
            raise ValueError(f"expected turn {expected}, got {index}")
        self._turns.append(transcript)

    @property
    def turns(self) -> list[str]:
        """The turn transcripts added so far, in order (a copy)."""
        return list(self._turns)

    @property
    def next_turn(self) -> int:
        """The index the next :meth:`add_turn` must carry."""
        return self._first + len(self._turns)

    @property
    def session_transcript(self) -> str:
        """The exact concatenation of the turn transcripts (no separators, nothing stripped)."""
        return "".join(self._turns)
