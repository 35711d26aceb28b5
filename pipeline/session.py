"""One session as a pure state machine: input chunks in, socket frames and output records out.

Lifecycle: ``streaming`` (audio flows) → ``draining`` (`end` received: queued audio is still paced
out) → ``closing`` (all audio sent, the close command sent; reading until the server closes) →
``ended`` with a status: ``complete``, ``truncated`` (the drain deadline hit) or ``failed`` (the STT
service refused or lost the session).

The session never does I/O. Its driver (:mod:`pipeline.runner`) feeds it input messages
(:meth:`Session.accept`), the STT server's text frames (:meth:`Session.on_message`) and the socket's
closing (:meth:`Session.on_closed`), asks it what to send (:meth:`Session.poll`) and when to ask again
(:meth:`Session.next_wakeup`), and publishes what :meth:`Session.take_outputs` returns, in order.
Times are injected: ``now`` (monotonic seconds) drives pacing and deadlines; ``at_ms`` (Unix ms)
stamps records.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from pipeline import audio
from pipeline.events import AutoNormalizer, ManualNormalizer, TranscriptAssembler, TurnEvent
from pipeline.pacing import Pacer
from pipeline.records import AudioFormat, InputMessage, Rejected

Status = Literal["complete", "truncated", "failed"]
Phase = Literal["streaming", "draining", "closing", "ended"]
Topic = Literal["turns", "transcripts"]


@dataclass(frozen=True, slots=True)
class SessionConfig:
    frame_ms: float = 100.0
    max_lead_ms: float = 300.0
    silence_budget_ms: float = 400.0
    drain_deadline_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Output:
    """A record to publish: ``final`` records (turn.end, session.*, transcripts) need exactly-once care."""

    topic: Topic
    key: str
    record: dict[str, Any]
    final: bool


def _error(
    code: str, title: str, message: str, status_code: int | None = None, retryable: bool = False
) -> dict[str, Any]:
    return {"status_code": status_code, "title": title, "message": message, "error_code": code, "retryable": retryable}


class Session:
    """See the module docstring."""

    def __init__(
        self,
        session_id: str,
        fmt: AudioFormat,
        *,
        first_offset: int,
        config: SessionConfig,
        wall_ms: Callable[[], int],
    ) -> None:
        self.session_id = session_id
        self.format = fmt
        self.first_offset = first_offset
        self.config = config
        self._wall_ms = wall_ms
        self.phase: Phase = "streaming"
        self.status: Status | None = None
        self.request_id: str | None = None
        self.duplicates = 0
        self.gaps = 0
        self._next_in = 0
        rate = fmt.sample_rate
        frame = audio.frame_bytes(fmt.encoding, rate, config.frame_ms)
        self.pacer = Pacer(
            frame_bytes=frame,
            frame_ms=config.frame_ms,
            max_lead_ms=config.max_lead_ms,
            silence_budget_ms=config.silence_budget_ms,
            silence_frame=audio.silence(fmt.encoding, frame // audio.bytes_per_sample(fmt.encoding)),
            bytes_per_ms=rate * audio.bytes_per_sample(fmt.encoding) / 1000.0,
        )
        self._pushed = 0
        self._sent_audio = 0
        self._finalize_marks: deque[int] = deque()
        self._close_sent = False
        self.close_sent_at: float | None = None
        self.drifts_ms: list[float] = []
        self._done_received = False
        self.deadline: float | None = None
        self.normalizer: AutoNormalizer | ManualNormalizer = (
            AutoNormalizer() if fmt.endpoint == "auto" else ManualNormalizer()
        )
        self.assembler = TranscriptAssembler()
        self._outputs: list[Output] = []
        self._turn_seq = 0
        self._transcript_seq = 0
        self._emit_turn("session.start")

    # -- input side ------------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.phase == "ended"

    def accept(self, message: InputMessage, now: float) -> bool:
        """Take one input message; False for a duplicate (dropped), :class:`Rejected` for bad input."""
        if message.seq < self._next_in:
            self.duplicates += 1
            return False
        if self.phase != "streaming":
            raise Rejected("after_end", f"session {self.session_id!r} already received `end`")
        if message.type == "audio":
            assert message.format is not None
            if not self.format.same_stream(message.format):
                old, new = self.format, message.format
                raise Rejected(
                    "encoding_changed",
                    f"session opened as {old.encoding}/{old.sample_rate} Hz/{old.channels} ch, "
                    f"chunk declares {new.encoding}/{new.sample_rate} Hz/{new.channels} ch",
                )
        if message.seq > self._next_in:
            self.gaps += 1
            self._emit_turn(
                "session.error",
                error=_error(
                    "seq_gap",
                    "Input gap",
                    f"expected seq {self._next_in}, got {message.seq}: {message.seq - self._next_in} chunk(s) missing",
                ),
            )
        self._next_in = message.seq + 1
        if message.type == "audio":
            data = message.audio
            if self.format.channels > 1:
                mono = audio.decode(data, self.format.encoding, self.format.channels)
                data = audio.encode(mono, self.format.encoding)
            self.pacer.push(data)
            self._pushed += len(data)
        elif message.type == "finalize":
            if isinstance(self.normalizer, ManualNormalizer):
                self._finalize_marks.append(self._pushed)
                self.pacer.cut()
        else:
            self.pacer.finish()
            self.phase = "draining"
            self.deadline = now + self.pacer.queued_bytes / self._bytes_per_s + self.config.drain_deadline_s
        return True

    @property
    def _bytes_per_s(self) -> float:
        return self.format.sample_rate * audio.bytes_per_sample(self.format.encoding)

    # -- socket side -----------------------------------------------------------------------------

    def poll(self, now: float, *, input_live: bool) -> list[bytes | str]:
        """Frames (binary audio) and commands (text) to send now, in order."""
        if self.phase in ("closing", "ended"):
            return []
        out: list[bytes | str] = []
        self._due_finalizes(out)
        lead_ms = self.pacer.lead_ms(now)
        self.drifts_ms = []
        for frame in self.pacer.poll(now, input_live=input_live and self.phase == "streaming"):
            self.drifts_ms.append(-lead_ms)
            lead_ms += len(frame.data) * 1000.0 / self._bytes_per_s
            out.append(frame.data)
            if not frame.silence:
                self._sent_audio += len(frame.data)
                self._due_finalizes(out)
        if self.phase == "draining" and self.pacer.drained and not self._finalize_marks:
            out.append('{"type":"close"}' if self.format.endpoint == "auto" else "close")
            self._close_sent = True
            self.close_sent_at = now
            self.phase = "closing"
        return out

    def _due_finalizes(self, out: list[bytes | str]) -> None:
        while self._finalize_marks and self._finalize_marks[0] <= self._sent_audio:
            self._finalize_marks.popleft()
            out.append("finalize")
            assert isinstance(self.normalizer, ManualNormalizer)
            self.normalizer.finalize_sent()

    def next_wakeup(self, now: float) -> float | None:
        """When :meth:`poll` or :meth:`check_deadline` should next run (None: only on new input)."""
        times = [t for t in (self.pacer.next_wakeup(now), self.deadline) if t is not None]
        if self.phase == "draining" and self.pacer.drained:
            times.append(now)
        return min(times) if times else None

    def on_message(self, message: str | bytes) -> None:
        """One text frame from the STT server."""
        if self.ended:
            return
        try:
            event = orjson.loads(message)
        except orjson.JSONDecodeError:
            event = None
        if not isinstance(event, dict):
            self._emit_turn(
                "session.error",
                error=_error("bad_provider_message", "Unreadable STT message", f"not a JSON object: {message[:200]!r}"),
            )
            return
        if isinstance(event.get("request_id"), str):
            self.request_id = event["request_id"]
        if event.get("type") == "done":
            self._done_received = True
        for turn_event in self.normalizer.feed(event):
            self._publish(turn_event)
        if event.get("type") == "error":
            self._end("failed")

    def on_closed(self, code: int | None, reason: str = "") -> None:
        """The STT socket closed (``code`` None: no close frame, an abnormal closure)."""
        if self.ended:
            return
        clean = code == 1000
        drained = self._close_sent and (self.format.endpoint == "auto" or self._done_received)
        if clean and drained:
            self._close_open_manual_turn()
            self._end("complete")
            return
        self._emit_turn(
            "session.error",
            error=_error(
                "stt_closed",
                "STT connection closed",
                f"the STT server closed the connection (code {code}, reason {reason!r}) before the session drained",
                status_code=None,
                retryable=code != 1008,
            ),
        )
        self._end("failed")

    def connect_failed(self, status_code: int | None, message: str) -> None:
        """The STT socket could not be opened (e.g. 401, 429, unreachable)."""
        if self.ended:
            return
        self._emit_turn(
            "session.error",
            error=_error(
                "stt_connect_failed",
                "STT connection refused",
                message,
                status_code=status_code,
                retryable=status_code is None or status_code >= 500 or status_code == 429,
            ),
        )
        self._end("failed")

    def check_deadline(self, now: float) -> None:
        """End a drain that hangs past its deadline as ``truncated``."""
        if self.deadline is not None and not self.ended and now >= self.deadline:
            self._emit_turn(
                "session.error",
                error=_error(
                    "drain_timeout",
                    "Drain deadline exceeded",
                    f"the STT service did not finish within {self.config.drain_deadline_s:g} s after the audio ended",
                ),
            )
            self._end("truncated")

    def _close_open_manual_turn(self) -> None:
        if isinstance(self.normalizer, ManualNormalizer) and self.normalizer.turn_open:
            for turn_event in self.normalizer.feed({"type": "done"}):
                self._publish(turn_event)

    # -- outputs ---------------------------------------------------------------------------------

    def take_outputs(self) -> list[Output]:
        out, self._outputs = self._outputs, []
        return out

    @property
    def audio_ms(self) -> float:
        return self.pacer.sent_audio_ms

    def _publish(self, event: TurnEvent) -> None:
        if event.type == "session.error":
            self._emit_turn("session.error", error=event.error, request_id=event.request_id)
            return
        self._emit_turn(event.type, turn=event.turn, transcript=event.transcript, request_id=event.request_id)
        if event.type == "turn.end":
            assert event.turn is not None and event.transcript is not None
            self.assembler.add_turn(event.turn, event.transcript)
            self._emit_transcript("turn", event.turn, event.transcript, "complete")

    def _end(self, status: Status) -> None:
        self.status = status
        self.phase = "ended"
        self._emit_turn("session.end", status=status)
        self._emit_transcript("session", len(self.assembler.turns), self.assembler.session_transcript, status)

    def _emit_turn(
        self,
        kind: str,
        *,
        turn: int | None = None,
        transcript: str | None = None,
        error: dict[str, Any] | None = None,
        status: Status | None = None,
        request_id: str | None = None,
    ) -> None:
        record: dict[str, Any] = {
            "session_id": self.session_id,
            "seq": self._turn_seq,
            "type": kind,
            "endpoint": self.format.endpoint,
            "request_id": request_id or self.request_id,
            "audio_ms": _ms(self.audio_ms),
            "at": self._wall_ms(),
        }
        for name, value in (("turn", turn), ("transcript", transcript), ("error", error), ("status", status)):
            if value is not None:
                record[name] = value
        self._turn_seq += 1
        final = kind in ("turn.end", "session.end", "session.start", "session.error")
        self._outputs.append(Output("turns", self.session_id, record, final))

    def _emit_transcript(self, kind: Literal["turn", "session"], turn: int, text: str, status: Status) -> None:
        record = {
            "kind": kind,
            "session_id": self.session_id,
            "seq": self._transcript_seq,
            "turn": turn,
            "transcript": text,
            "status": status,
            "audio_ms": _ms(self.audio_ms),
            "at": self._wall_ms(),
        }
        self._transcript_seq += 1
        self._outputs.append(Output("transcripts", self.session_id, record, True))


def _ms(value: float) -> float:
    return math.floor(value * 1000) / 1000
