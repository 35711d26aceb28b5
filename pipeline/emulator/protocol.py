"""The emulator's protocol core: one WebSocket connection as a pure state machine (no I/O).

The server edge feeds it what the client sent (binary audio, text frames) and sends back what it
returns: JSON-able event dicts, and at most one :class:`Close` directive as the last item.

Turn detection (auto endpoint). Cartesia compares one model score against three thresholds. The
emulator's "model" is deterministic: during speech the score is 1; over silence it decays as
``exp(-silence_ms / tau_ms)``. So a threshold ``h`` is crossed after ``-tau_ms * ln(h)`` ms of silence:
with the defaults (tau 500 ms) `turn.eager_end` comes after ~458 ms of silence (threshold 0.4) and
`turn.end` after ~805 ms (threshold 0.2), capped by ``turn_end_timeout_ms``. Speech that resumes
after an eager end gives `turn.resume`. Silence is measured in *audio* time, so a client that stops
sending audio never sees a turn end: the server waits, as Cartesia's does.

Server-side buffering. Cartesia "buffers some audio to improve transcription accuracy": without
``close`` (or, on the manual endpoint, ``finalize``) that audio "will not be processed". The core
holds back the newest ``buffer_ms`` of audio (the server edge defaults to
:data:`DEFAULT_SERVER_BUFFER_MS`); only older audio reaches the recognizer and the turn clock, so the
last words of a stream are recognized only when more audio pushes them out, or on ``close`` (auto) /
``finalize`` or ``close`` (manual). A client that disconnects or stops sending without ``close``
loses that tail, as documented. The pure core's own default is no buffering.

Server variants. Where Cartesia's docs are silent (the UNCONFIRMED points), each plausible
alternative server is a :class:`Variant` a connection can be given, so clients are tested against all
of them: ``flush_done_first`` (manual: `flush_done` before that finalize's final transcript),
``repeat_updates`` (every `turn.update` sent twice), ``update_while_eager`` (a `turn.update` after
`turn.eager_end`, before the turn resolves), ``no_turn_start`` (turns end without a `turn.start`),
``no_leading_space`` (later turns' text has no leading separator: the concatenation has none either).
The server edge adds ``in_stream_429`` (the concurrency limit as an `error` event, then a close).

Manual endpoint. Text since the last final is pending; an interim `transcript` (``is_final: false``)
is sent at each word boundary; ``finalize`` makes it final (even mid-word: "Insert" now, "ing" later)
and is acknowledged with `flush_done` *after* that final; silence longer than
``max_silence_duration_secs`` (default 1.5 s) auto-finalizes; ``close`` (or the older ``done``)
finalizes, sends `done`, then closes with 1000. Each `transcript` carries ``duration`` (seconds of
audio since the last final), ``language`` and ``words`` in the official SDK's shape: a list holding one
``WordTimestamps`` object with parallel lists ``words``, ``start`` and ``end`` (seconds from the start
of the connection's audio), one entry per token of ``text`` timed so far (all of them on a final;
times from :class:`pipeline.emulator.words.WordTimer`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import orjson
from numpy.typing import NDArray

from pipeline.audio import bytes_per_sample, decode
from pipeline.emulator.engines.base import EngineEvent, Recognizer, SpeechEnd, SpeechStart, Text
from pipeline.emulator.params import DOC_URL, ConnectionParams, ParamError, TurnSettings, turn_settings_update
from pipeline.emulator.words import TimedWord, WordTimer

DEFAULT_TAU_MS = 500.0
DEFAULT_MANUAL_AUTO_FINALIZE_S = 1.5
DEFAULT_SERVER_BUFFER_MS = 1000.0

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008  # the client broke the protocol (4xx-class error)
CLOSE_INTERNAL = 1011  # the server failed (5xx-class error)


Variant = Literal[
    "flush_done_first",
    "repeat_updates",
    "update_while_eager",
    "no_turn_start",
    "no_leading_space",
    "in_stream_429",
]
VARIANTS: tuple[Variant, ...] = get_args(Variant)


@dataclass(frozen=True, slots=True)
class Close:
    """Close the socket with this code after sending everything before it."""

    code: int
    reason: str = ""


Outgoing = dict[str, Any] | Close


def error_event(
    status_code: int, title: str, message: str, error_code: str | None, request_id: str | None
) -> dict[str, Any]:
    """A Cartesia-shaped `error` event."""
    event: dict[str, Any] = {"type": "error", "status_code": status_code, "title": title, "message": message}
    if error_code is not None:
        event["error_code"] = error_code
    event["doc_url"] = DOC_URL
    if request_id is not None:
        event["request_id"] = request_id
    return event


def error_from(exc: ParamError, request_id: str | None) -> dict[str, Any]:
    return error_event(exc.status_code, exc.title, exc.message, exc.error_code, request_id)


def silence_for_threshold(threshold: float, tau_ms: float) -> float:
    """Silence (ms) after which the decaying turn score falls below ``threshold``."""
    return -tau_ms * math.log(threshold)


class _Core:
    """What both endpoints share: audio decoding with carry-over, the server-side buffer, the audio
    clock, engine dispatch."""

    def __init__(
        self,
        params: ConnectionParams,
        recognizer: Recognizer,
        request_id: str,
        *,
        buffer_ms: float = 0.0,
        variants: frozenset[Variant] = frozenset(),
    ) -> None:
        if buffer_ms < 0:
            raise ValueError(f"buffer_ms must be >= 0, got {buffer_ms}")
        self.params = params
        self.request_id = request_id
        self.variants = variants
        self._recognizer = recognizer
        self._sample_bytes = bytes_per_sample(params.encoding)
        self._carry = b""
        self._samples = 0
        self._fed = 0
        self._held: NDArray[np.float32] = np.zeros(0, dtype=np.float32)
        self._hold = round(buffer_ms * params.sample_rate / 1000.0)
        self._in_speech = False
        self._silence_from = 0.0
        self.closed = False

    @property
    def audio_ms(self) -> float:
        """Audio received so far, in ms of the declared rate."""
        return self._samples * 1000.0 / self.params.sample_rate

    @property
    def processed_ms(self) -> float:
        """Audio handed to the recognizer so far (received minus the server-side buffer)."""
        return self._fed * 1000.0 / self.params.sample_rate

    def opening(self) -> list[Outgoing]:
        return []

    def audio(self, data: bytes) -> list[Outgoing]:
        """Consume one binary frame; a trailing partial sample is kept for the next frame."""
        if self.closed:
            return []
        data = self._carry + data
        whole = len(data) - len(data) % self._sample_bytes
        self._carry = data[whole:]
        if not whole:
            return []
        samples = decode(data[:whole], self.params.encoding)
        self._samples += len(samples)
        held = np.concatenate((self._held, samples)) if len(self._held) else samples
        cut = max(0, len(held) - self._hold)
        self._held = held[cut:]
        out: list[Outgoing] = []
        self._feed(held[:cut], out)
        return out

    def _feed(self, samples: NDArray[np.float32], out: list[Outgoing]) -> None:
        if not len(samples):
            return
        self._fed += len(samples)
        self._dispatch(self._recognizer.feed(samples), out)
        self._advance(self.processed_ms, out)

    def _drain(self, out: list[Outgoing]) -> None:
        """Process everything buffered, then force out the recognizer's text (finalize / close)."""
        held, self._held = self._held, np.zeros(0, dtype=np.float32)
        self._feed(held, out)
        self._dispatch(self._recognizer.flush(), out)

    def _dispatch(self, events: list[EngineEvent], out: list[Outgoing]) -> None:
        for event in events:
            self._advance(event.at_ms, out)
            self._timed(event)
            if isinstance(event, SpeechStart):
                self._in_speech = True
                self._speech_started(out)
            elif isinstance(event, SpeechEnd):
                self._in_speech = False
                self._silence_from = event.at_ms
            elif isinstance(event, Text):
                self._text(event.text)
            self._settle(out)

    def _timed(self, event: EngineEvent) -> None:
        """Every engine event, first (word timing)."""

    def _advance(self, now_ms: float, out: list[Outgoing]) -> None:
        """Audio time has reached ``now_ms``: act on the silence so far."""

    def _speech_started(self, out: list[Outgoing]) -> None:
        """Voice activity began."""

    def _text(self, text: str) -> None:
        """Recognized text arrived."""

    def _settle(self, out: list[Outgoing]) -> None:
        """After each engine event: publish visible changes."""

    def _json(self, event: dict[str, Any]) -> dict[str, Any]:
        event["request_id"] = self.request_id
        return event


class AutoSession(_Core):
    """`/stt/turns/websocket`: server-side turn detection."""

    def __init__(
        self,
        params: ConnectionParams,
        recognizer: Recognizer,
        request_id: str,
        *,
        tau_ms: float = DEFAULT_TAU_MS,
        buffer_ms: float = 0.0,
        variants: frozenset[Variant] = frozenset(),
    ) -> None:
        super().__init__(params, recognizer, request_id, buffer_ms=buffer_ms, variants=variants)
        self._tau_ms = tau_ms
        self._state = "idle"  # idle | speaking | eager
        self._turn_text = ""
        self._shown = ""
        self._set_turn(params.turn)

    def _set_turn(self, turn: TurnSettings) -> None:
        self.turn_settings = turn
        self.eager_silence_ms = silence_for_threshold(turn.eager_end_threshold, self._tau_ms)
        self.end_silence_ms = min(silence_for_threshold(turn.end_threshold, self._tau_ms), turn.end_timeout_ms)

    def opening(self) -> list[Outgoing]:
        return [self._json({"type": "connected"})]

    def text(self, message: str) -> list[Outgoing]:
        """A text frame: a JSON command (`close` or `config`)."""
        if self.closed:
            return []
        try:
            command = orjson.loads(message)
        except orjson.JSONDecodeError:
            command = None
        kind = command.get("type") if isinstance(command, dict) else None
        if kind == "close":
            return self.finish()
        if kind == "config":
            turn = command.get("turn", {})
            try:
                if not isinstance(turn, dict):
                    raise ParamError("Invalid config", "`turn` must be an object.", "invalid_turn_config")
                self._set_turn(turn_settings_update(self.turn_settings, turn))
            except ParamError as exc:
                return [error_from(exc, self.request_id)]
            return []
        return [
            error_event(
                400,
                "Invalid message",
                'Text messages must be JSON commands: {"type":"close"} or {"type":"config",...}.',
                "invalid_message",
                self.request_id,
            )
        ]

    def finish(self) -> list[Outgoing]:
        """The client sent close: recognize everything buffered, end the open turn, close 1000."""
        if self.closed:
            return []
        out: list[Outgoing] = []
        self._drain(out)
        if self._state != "idle":
            self._end_turn(out)
        self.closed = True
        out.append(Close(CLOSE_NORMAL))
        return out

    def _speech_started(self, out: list[Outgoing]) -> None:
        if self._state == "idle":
            self._state = "speaking"
            self._turn_text = self._shown = ""
            if "no_turn_start" not in self.variants:
                out.append(self._json({"type": "turn.start"}))
        elif self._state == "eager":
            self._state = "speaking"
            out.append(self._json({"type": "turn.resume"}))

    def _text(self, text: str) -> None:
        if not self._turn_text and "no_leading_space" in self.variants:
            text = text.lstrip()
        self._turn_text += text

    def _settle(self, out: list[Outgoing]) -> None:
        if self._state != "idle" and not self._in_speech and self._turn_text != self._shown:
            self._shown = self._turn_text
            update = self._json({"type": "turn.update", "transcript": self._turn_text})
            out.append(update)
            if "repeat_updates" in self.variants:
                out.append(dict(update))

    def _advance(self, now_ms: float, out: list[Outgoing]) -> None:
        if self._in_speech or self._state == "idle":
            return
        silence = now_ms - self._silence_from
        if self._state == "speaking" and self._turn_text and silence >= self.eager_silence_ms:
            self._state = "eager"
            out.append(self._json({"type": "turn.eager_end", "transcript": self._turn_text}))
            if "update_while_eager" in self.variants:
                out.append(self._json({"type": "turn.update", "transcript": self._turn_text}))
        if silence >= self.end_silence_ms:
            self._end_turn(out)

    def _end_turn(self, out: list[Outgoing]) -> None:
        self._settle(out)
        out.append(self._json({"type": "turn.end", "transcript": self._turn_text}))
        self._state = "idle"
        self._turn_text = self._shown = ""


class ManualSession(_Core):
    """`/stt/websocket`: client-driven finalization; `is_final` deltas."""

    def __init__(
        self,
        params: ConnectionParams,
        recognizer: Recognizer,
        request_id: str,
        *,
        buffer_ms: float = 0.0,
        variants: frozenset[Variant] = frozenset(),
    ) -> None:
        super().__init__(params, recognizer, request_id, buffer_ms=buffer_ms, variants=variants)
        self._pending = ""
        self._shown = ""
        self._final_from_ms = 0.0
        self._timer = WordTimer()
        self._pending_words: list[TimedWord] = []
        seconds = params.max_silence_duration_secs
        if seconds is None:
            seconds = DEFAULT_MANUAL_AUTO_FINALIZE_S
        self.auto_finalize_ms = seconds * 1000.0

    def text(self, message: str) -> list[Outgoing]:
        """A text frame: the plain-text commands `finalize`, `close` (or the older `done`)."""
        if self.closed:
            return []
        command = message.strip()
        if command == "finalize":
            out: list[Outgoing] = []
            self._drain(out)
            if "flush_done_first" in self.variants:
                out.append(self._json({"type": "flush_done"}))
                self._finalize(out)
            else:
                self._finalize(out)
                out.append(self._json({"type": "flush_done"}))
            return out
        if command in ("close", "done"):
            return self.finish()
        return [
            error_event(
                400,
                "Invalid message",
                "Text messages must be one of the plain-text commands `finalize` or `close`.",
                "invalid_message",
                self.request_id,
            )
        ]

    def finish(self) -> list[Outgoing]:
        if self.closed:
            return []
        out: list[Outgoing] = []
        self._drain(out)
        self._finalize(out)
        out.append(self._json({"type": "done"}))
        out.append(Close(CLOSE_NORMAL))
        self.closed = True
        return out

    def _timed(self, event: EngineEvent) -> None:
        self._timer.feed((event,))

    def _text(self, text: str) -> None:
        self._pending += text

    def _settle(self, out: list[Outgoing]) -> None:
        self._pending_words.extend(self._timer.take())
        if not self._in_speech and self._pending and self._pending != self._shown:
            self._shown = self._pending
            out.append(self._transcript(self._pending, is_final=False))

    def _advance(self, now_ms: float, out: list[Outgoing]) -> None:
        if not self._in_speech and self._pending and now_ms - self._silence_from >= self.auto_finalize_ms:
            self._finalize(out)

    def _finalize(self, out: list[Outgoing]) -> None:
        self._timer.cut(self.processed_ms)
        self._pending_words.extend(self._timer.take())
        if self._pending:
            out.append(self._transcript(self._pending, is_final=True))
        self._pending = self._shown = ""
        self._pending_words = []
        self._final_from_ms = self.processed_ms

    def _transcript(self, text: str, *, is_final: bool) -> dict[str, Any]:
        return self._json(
            {
                "type": "transcript",
                "is_final": is_final,
                "text": text,
                "duration": round((self.processed_ms - self._final_from_ms) / 1000.0, 3),
                "language": self.params.language,
                "words": [
                    {
                        "words": [w.word for w in self._pending_words],
                        "start": [round(w.start_ms / 1000.0, 3) for w in self._pending_words],
                        "end": [round(w.end_ms / 1000.0, 3) for w in self._pending_words],
                    }
                ],
            }
        )


Session = AutoSession | ManualSession


class RateGuard:
    """Detects audio sent faster than realtime beyond a budget, as Cartesia's servers do.

    The client may be at most ``budget_ms`` of audio ahead of the wall clock since its first audio.
    """

    def __init__(self, budget_ms: float) -> None:
        self.budget_ms = budget_ms
        self._t0: float | None = None
        self._audio_ms = 0.0
        self.max_lead_ms = 0.0

    def add(self, audio_ms: float, now: float) -> bool:
        """Record ``audio_ms`` arriving at ``now`` (seconds); True if the client is over budget."""
        if self._t0 is None:
            self._t0 = now
        self._audio_ms += audio_ms
        lead = self._audio_ms - (now - self._t0) * 1000.0
        self.max_lead_ms = max(self.max_lead_ms, lead)
        return lead > self.budget_ms

    def realtime_ratio(self, now: float) -> float:
        """Audio seconds received per wall-clock second since the first audio."""
        if self._t0 is None or now <= self._t0:
            return 0.0
        return self._audio_ms / ((now - self._t0) * 1000.0)
