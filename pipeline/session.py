"""One session as a pure state machine: input chunks in, socket frames and output records out.

Lifecycle: ``streaming`` (audio flows) → ``draining`` (`end` received: queued audio is still paced
out) → ``closing`` (all audio sent, the close command sent; reading until the server closes) →
``ended`` with a status: ``complete``, ``truncated`` (a deadline or guard hit) or ``failed`` (the STT
service refused the session, or reconnecting gave up).

The session never does I/O. Its driver (:mod:`pipeline.runner`) feeds it input messages
(:meth:`Session.accept`), the STT server's text frames (:meth:`Session.on_message`) and the socket's
closing (:meth:`Session.on_closed`), asks it what to send (:meth:`Session.poll`) and when to ask again
(:meth:`Session.next_wakeup`), and publishes what :meth:`Session.take` returns, in order.
Times are injected: ``now`` (monotonic seconds) drives pacing and deadlines; ``at_ms`` (Unix ms)
stamps records.

Outputs and checkpoint are taken together (:meth:`Session.take`): the checkpoint returned counts
exactly the records returned by this and earlier takes, so a transaction that carries both is
consistent. Retry decisions follow one rule, :attr:`pipeline.errors.ProviderError.retryable`.
Provider text that goes into a record (error titles, messages and codes, close reasons, upgrade
bodies, unreadable frames) passes through the injected ``scrub`` first.

Recovery. The session *holds* every input record since its last final turn: the resume point. A
crash restarts it there from its checkpoint (:meth:`Session.checkpoint`, :class:`Resume`); a lost STT
connection (:attr:`Session.needs_reconnect`) restarts it there in-process (:meth:`Session.reconnect`).
Either way the open turn is transcribed again on a fresh connection and numbering continues, so no
final turn is lost or published twice. After an auto-endpoint turn ends, the resume point is the
record holding the audio ``replay_margin_ms`` before what had been sent when `turn.end` arrived
(that audio lies inside the silence that ended the turn; the margin covers the provider's own buffer
of not-yet-processed audio, see :data:`DEFAULT_REPLAY_MARGIN_MS`); after a manual turn ends at a `flush_done`,
it is the record right after its `finalize`.

Connection seams. A fresh connection's first text has no leading space (the provider starts a new
transcript). When a session continues on a new connection and neither side of the join has
whitespace, the first turn of the new connection gets the single space the provider would have
sent had the connection continued, unless this session's provider was seen to start later turns
without a separator (then it adds none: it never invents a separator the provider doesn't use).
This is the one place text is touched; it keeps a recovered session's transcript identical to an
undisturbed one. What was seen survives a crash restart: the checkpoint carries it
(``provider_separates``). Until a session has seen a later turn (and when resuming from a checkpoint
written without the field) the documented Cartesia behaviour, a leading space, is assumed.

Word timestamps. The provider times words from the first audio of *its* connection; the session
publishes them in session input audio time (:meth:`Session.session_ms`): offset by where the
connection's audio began (0, the replay start after a reconnect, or the checkpoint's ``audio_ms``
after a crash resume), with the silence fill sent on that connection taken out. Words that would
push a turn record past ``max_text_bytes`` are left out of it (the text still goes).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import orjson

from pipeline import audio
from pipeline.contract import (
    Checkpoint,
    ProviderErrorInfo,
    SessionStatus,
    TranscriptRecord,
    TurnRecord,
    TurnType,
    WordTiming,
)
from pipeline.errors import ProviderError
from pipeline.events import AutoNormalizer, ManualNormalizer, TranscriptAssembler, TurnEvent
from pipeline.pacing import Pacer
from pipeline.records import AudioFormat, InputMessage, MessageType, Rejected

Status = SessionStatus
Phase = Literal["streaming", "draining", "closing", "ended"]
Topic = Literal["turns", "transcripts"]


MAX_REQUEST_ID_CHARS = 256
MAX_LANGUAGE_CHARS = 64
# Audio before `turn.end` kept for replay. It must exceed the audio the provider buffers before it
# recognizes it (Cartesia: "about the last second"; the emulator's default 1000 ms) plus the events'
# trip back, or a replay would start after audio the provider never processed, and stay below that
# buffer plus the silence the provider needs to end a turn (≈0.5-0.8 s), or it would replay the
# ended turn's last words.
DEFAULT_REPLAY_MARGIN_MS = 1500.0


@dataclass(frozen=True, slots=True)
class SessionConfig:
    frame_ms: float = 100.0
    max_lead_ms: float = 300.0
    silence_budget_ms: float = 400.0
    drain_deadline_s: float = 30.0
    replay_margin_ms: float = DEFAULT_REPLAY_MARGIN_MS
    max_reconnects: int = 5
    # Largest serialized transcript text one record may carry (a turn's text, or the session's); the
    # rest of the record budget is left for the envelope. Provider text beyond it fails the session.
    max_text_bytes: int = 1_000_000 - 16_384


@dataclass(frozen=True, slots=True)
class Output:
    """A record to publish: ``final`` records (turn.end, session.end, transcripts) need exactly-once care."""

    topic: Topic
    key: str
    record: TurnRecord | TranscriptRecord
    final: bool


@dataclass(frozen=True, slots=True)
class Taken:
    """What :meth:`Session.take` returns: the outputs since the last take, and the checkpoint as of
    the same instant (its ``next_seq``/``next_transcript_seq`` count exactly these and earlier outputs)."""

    outputs: list[Output]
    checkpoint: Checkpoint


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a session restarts after a crash (read from its checkpoint), and what it had learned of
    its provider (``provider_separates``: see Connection seams in the module docstring)."""

    next_seq: int
    next_turn: int
    next_transcript_seq: int
    transcript: str
    next_input_seq: int
    audio_ms: float
    provider_separates: bool | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> Resume:
        return cls(
            next_seq=checkpoint.next_seq,
            next_turn=checkpoint.next_turn,
            next_transcript_seq=checkpoint.next_transcript_seq,
            transcript=checkpoint.transcript,
            next_input_seq=checkpoint.next_input_seq,
            audio_ms=checkpoint.audio_ms,
            provider_separates=checkpoint.provider_separates,
        )


@dataclass(slots=True)
class _Held:
    """An accepted input record the session may have to replay."""

    offset: int
    seq: int
    kind: MessageType
    start: int  # input audio bytes before it
    data: bytes  # mono audio in the session's encoding; empty for finalize/end


def _error(code: str, title: str, message: str) -> ProviderErrorInfo:
    """An error of the pipeline's own (no status, not retried)."""
    return ProviderErrorInfo(status_code=None, title=title, message=message, error_code=code, retryable=False)


def _truncate(text: str) -> str:
    return text[:512]


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
        resume: Resume | None = None,
        scrub: Callable[[str], str] = _truncate,
    ) -> None:
        """:param scrub: applied to every provider-originated text before it goes into a record."""
        self.session_id = session_id
        self._scrub = scrub
        self._request_id_cache: tuple[str, str] | None = None
        self.format = fmt
        self.first_offset = first_offset
        self.config = config
        self._wall_ms = wall_ms
        self.phase: Phase = "streaming"
        self.status: Status | None = None
        self.request_id: str | None = None
        self.duplicates = 0
        self.gaps = 0
        self.reconnects = 0
        self.needs_reconnect = False
        self.errors = 0  # provider errors so far; the last one is last_error
        self.last_error: ProviderError | None = None
        self._past_anomalies: Counter[str] = Counter()  # of connections before the current one
        self.close_offset: int | None = None
        self.end_at: int | None = None  # the `end` record's Kafka timestamp, carried onto the session final
        self.close_sent_at: float | None = None
        self.deadline: float | None = None
        self.drifts_ms: list[float] = []
        self._bytes_per_s = float(fmt.sample_rate * audio.bytes_per_sample(fmt.encoding))
        self._held: deque[_Held] = deque()
        self._next_offset = first_offset
        self._outputs: list[Output] = []
        # Whether the provider starts a connection's later turns with a separator: None until seen.
        self._provider_separates: bool | None = None if resume is None else resume.provider_separates
        self._finalizes_sent: deque[int] = deque()  # offsets of finalize records sent, awaiting flush_done
        if resume is None:
            self._next_in = 0
            self._turn_seq = self._transcript_seq = self._first_turn = 0
            self._prior = ""
            base = 0
        else:
            self._next_in = resume.next_input_seq
            self._turn_seq, self._transcript_seq = resume.next_seq, resume.next_transcript_seq
            self._first_turn, self._prior = resume.next_turn, resume.transcript
            base = int(resume.audio_ms * self._bytes_per_s / 1000) // audio.bytes_per_sample(fmt.encoding)
            base *= audio.bytes_per_sample(fmt.encoding)
        self._pushed = self._sent_audio = base
        self.assembler = TranscriptAssembler(first_turn=self._first_turn)
        self._new_connection()
        if resume is None:
            self._emit_turn("session.start")

    def _new_connection(self) -> None:
        """Fresh pacer and normalizer for a (re)connection, starting at the resume point."""
        fmt, config = self.format, self.config
        frame = audio.frame_bytes(fmt.encoding, fmt.sample_rate, config.frame_ms)
        self.pacer = Pacer(
            frame_bytes=frame,
            frame_ms=config.frame_ms,
            max_lead_ms=config.max_lead_ms,
            silence_budget_ms=config.silence_budget_ms,
            silence_frame=audio.silence(fmt.encoding, frame // audio.bytes_per_sample(fmt.encoding)),
            bytes_per_ms=self._bytes_per_s / 1000.0,
        )
        next_turn = self.assembler.next_turn
        self.normalizer: AutoNormalizer | ManualNormalizer = (
            AutoNormalizer(first_turn=next_turn) if fmt.endpoint == "auto" else ManualNormalizer(first_turn=next_turn)
        )
        # Provider times count this connection's audio (silence fill included) from its first frame.
        self._connection_start_ms = self._pushed * 1000.0 / self._bytes_per_s
        self._connection_sent_ms = 0.0
        self._fills: list[tuple[float, float]] = []  # (connection ms where fill began, its length in ms)
        self._seam_turn = next_turn if self._text_so_far() else None
        self._connection_first_turn = next_turn
        self._finalize_marks: deque[tuple[int, int]] = deque()  # (audio position, record offset)
        self._finalizes_sent.clear()
        self._close_sent = False
        self._done_received = False
        self.needs_reconnect = False

    # -- input side ------------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.phase == "ended"

    def accept(self, message: InputMessage, now: float, offset: int | None = None) -> bool:
        """Take one input message (read at ``offset``); False for a duplicate, :class:`Rejected` for bad input."""
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
            missing = message.seq - self._next_in
            self._emit_turn(
                "session.error",
                error=_error(
                    "seq_gap",
                    "Input gap",
                    f"expected seq {self._next_in}, got {message.seq}: {missing} chunk(s) missing",
                ),
            )
        self._next_in = message.seq + 1
        offset = self._next_offset if offset is None else offset
        self._next_offset = offset + 1
        data = message.audio
        if message.type == "audio" and self.format.channels > 1:
            data = audio.encode(audio.decode(data, self.format.encoding, self.format.channels), self.format.encoding)
        held = _Held(offset, message.seq, message.type, self._pushed, data)
        self._held.append(held)
        self._feed(held)
        if message.type == "end":
            self.phase = "draining"
            self.close_offset = offset
            self.end_at = message.timestamp
            self.deadline = now + self.pacer.queued_bytes / self._bytes_per_s + self.config.drain_deadline_s
        return True

    def _feed(self, held: _Held) -> None:
        """Give one held record to the current connection's pacer."""
        if held.kind == "audio":
            self.pacer.push(held.data)
            self._pushed += len(held.data)
        elif held.kind == "finalize":
            if isinstance(self.normalizer, ManualNormalizer):
                self._finalize_marks.append((self._pushed, held.offset))
                self.pacer.cut()
        else:
            self.pacer.finish()

    @property
    def resume_offset(self) -> int:
        """The input offset a restart must read from: the first record after the last final turn."""
        return self._held[0].offset if self._held else self._next_offset

    @property
    def held_bytes(self) -> int:
        """Audio held for replay (bounded by the audio since the last final turn)."""
        return sum(len(h.data) for h in self._held)

    def _release_through(self, position: int, *, finalize_offset: int | None = None) -> None:
        """A turn ended: drop held records no longer needed (never the `end` record)."""
        while self._held and self._held[0].kind != "end":
            first = self._held[0]
            if finalize_offset is not None:
                if first.offset > finalize_offset:
                    break
            elif first.start + len(first.data) > position or (first.kind == "finalize" and first.start >= position):
                break
            self._held.popleft()

    # -- socket side -----------------------------------------------------------------------------

    def poll(self, now: float, *, input_live: bool) -> list[bytes | str]:
        """Frames (binary audio) and commands (text) to send now, in order."""
        self.drifts_ms = []
        if self.phase in ("closing", "ended") or self.needs_reconnect:
            return []
        out: list[bytes | str] = []
        self._due_finalizes(out)
        lead_ms = self.pacer.lead_ms(now)
        for frame in self.pacer.poll(now, input_live=input_live and self.phase == "streaming"):
            self.drifts_ms.append(-lead_ms)
            frame_ms = len(frame.data) * 1000.0 / self._bytes_per_s
            lead_ms += frame_ms
            out.append(frame.data)
            if frame.silence:
                self._note_fill(frame_ms)
            self._connection_sent_ms += frame_ms
            if not frame.silence:
                self._sent_audio += len(frame.data)
                self._due_finalizes(out)
        if self.phase == "draining" and self.pacer.drained and not self._finalize_marks:
            out.append('{"type":"close"}' if self.format.endpoint == "auto" else "close")
            self._close_sent = True
            self.close_sent_at = now
            self.phase = "closing"
        return out

    def _note_fill(self, frame_ms: float) -> None:
        at = self._connection_sent_ms
        if self._fills and self._fills[-1][0] + self._fills[-1][1] == at:
            start, length = self._fills[-1]
            self._fills[-1] = (start, length + frame_ms)
        else:
            self._fills.append((at, frame_ms))

    def session_ms(self, connection_ms: float) -> float:
        """A time in the current connection's audio (the provider's clock) as session input audio time:
        shifted by where the connection's audio began, silence fill taken out (a time inside a fill maps
        to the fill's start)."""
        filled = sum(min(length, max(0.0, connection_ms - at)) for at, length in self._fills)
        return self._connection_start_ms + connection_ms - filled

    def _due_finalizes(self, out: list[bytes | str]) -> None:
        while self._finalize_marks and self._finalize_marks[0][0] <= self._sent_audio:
            _, offset = self._finalize_marks.popleft()
            out.append("finalize")
            self._finalizes_sent.append(offset)
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
        if self.ended or self.needs_reconnect:
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
        kind = event.get("type")
        if isinstance(event.get("request_id"), str):
            self.request_id = self._scrubbed_request_id(event["request_id"])
        if kind == "done":
            self._done_received = True
        ended_turn = False
        for turn_event in self.normalizer.feed(event):
            ended_turn |= turn_event.type == "turn.end"
            self._publish(turn_event)
        if kind == "flush_done" and self._finalizes_sent:
            finalize_offset = self._finalizes_sent.popleft()
            if ended_turn:
                self._release_through(0, finalize_offset=finalize_offset)
        elif ended_turn:
            margin = int(self.config.replay_margin_ms * self._bytes_per_s / 1000)
            self._release_through(self._sent_audio - margin)
        if kind == "error":
            self._after_error(ProviderError.from_event(event))

    def on_closed(self, code: int | None, reason: str = "") -> None:
        """The STT socket closed (``code`` None: no close frame, an abnormal closure)."""
        if self.ended or self.needs_reconnect:
            return
        drained = self._close_sent and (self.format.endpoint == "auto" or self._done_received)
        if code == 1000 and drained:
            self._close_open_manual_turn()
            self._end("complete")
            return
        error = ProviderError.closed(code, reason)
        self._emit_turn("session.error", error=ProviderErrorInfo.from_error(error))
        self._after_error(error)

    def connect_failed(self, error: ProviderError) -> None:
        """The STT socket could not be opened (see :meth:`ProviderError.from_handshake`, ``.transport``)."""
        if self.ended:
            return
        self._emit_turn("session.error", error=ProviderErrorInfo.from_error(error))
        self._after_error(error)

    def _after_error(self, error: ProviderError) -> None:
        """The one retry rule: reconnect if ``error`` is retryable, else fail."""
        if self.ended:
            return
        self.errors += 1
        self.last_error = error
        if error.retryable:
            self.needs_reconnect = True
        else:
            self._end("failed")

    def fail(self, code: str, message: str) -> None:
        """End the session now as ``failed`` with a ``session.error`` (e.g. its driver crashed)."""
        if self.ended:
            return
        self._emit_turn("session.error", error=_error(code, "Session failed", message))
        self._end("failed")

    def reconnect(self) -> None:
        """Start over on a fresh connection from the resume point (the audio since the last final turn)."""
        if self.ended:
            return
        if self.reconnects >= self.config.max_reconnects:
            self._emit_turn(
                "session.error",
                error=_error("stt_gave_up", "STT unavailable", f"gave up after {self.reconnects} reconnect attempts"),
            )
            self._end("failed")
            return
        self.reconnects += 1
        self._past_anomalies += self._connection_anomalies()
        base = self._held[0].start if self._held else self._pushed
        self._pushed = self._sent_audio = base
        self._new_connection()
        for held in self._held:
            self._feed(held)
        if self.phase == "closing":
            self.phase = "draining"

    def _connection_anomalies(self) -> Counter[str]:
        counts = Counter(self.normalizer.anomalies)
        counts["unknown_event"] += self.normalizer.unknown_events
        return counts

    def anomalies(self) -> Counter[str]:
        """What the normalizers repaired or ignored, by kind (``unknown_event``: an unknown event type),
        over all of the session's connections."""
        return self._past_anomalies + self._connection_anomalies()

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

    def truncate(self, code: str, message: str) -> None:
        """End the session now as ``truncated`` (a guard: idle timeout, maximum duration)."""
        if self.ended:
            return
        self._emit_turn("session.error", error=_error(code, "Session truncated", message))
        self._end("truncated")

    def _close_open_manual_turn(self) -> None:
        if isinstance(self.normalizer, ManualNormalizer) and self.normalizer.turn_open:
            for turn_event in self.normalizer.feed({"type": "done"}):
                self._publish(turn_event)

    # -- outputs ---------------------------------------------------------------------------------

    @property
    def has_outputs(self) -> bool:
        """Whether :meth:`take` would return outputs (cheap: the checkpoint is built only by :meth:`take`)."""
        return bool(self._outputs)

    def take(self) -> Taken:
        """The outputs produced since the last take, with the checkpoint that accounts for exactly them."""
        out, self._outputs = self._outputs, []
        return Taken(out, self.checkpoint())

    @property
    def audio_ms(self) -> float:
        """Position in the session's input audio sent to STT so far (silence fill not counted)."""
        return self._sent_audio * 1000.0 / self._bytes_per_s

    def _text_so_far(self) -> str:
        return self._prior + self.assembler.session_transcript

    def checkpoint(self) -> Checkpoint:
        """The session's restart state (a `stt.sessions` record), counting every output produced so far,
        taken or not: a commit must use :meth:`take`, which returns both at once."""
        start = self._held[0].start if self._held else self._pushed
        fmt = self.format
        return Checkpoint(
            session_id=self.session_id,
            status=self.status or "open",
            resume_offset=self.resume_offset,
            next_seq=self._turn_seq,
            next_turn=self.assembler.next_turn,
            next_transcript_seq=self._transcript_seq,
            next_input_seq=self._held[0].seq if self._held else self._next_in,
            transcript=self._text_so_far(),
            audio_ms=_ms(start * 1000.0 / self._bytes_per_s),
            close_offset=self.close_offset,
            endpoint=fmt.endpoint,
            encoding=fmt.encoding,
            sample_rate=fmt.sample_rate,
            channels=fmt.channels,
            model=fmt.model,
            language=fmt.language,
            at=self._wall_ms(),
            provider_separates=self._provider_separates,
        )

    def _seamed(self, event: TurnEvent) -> TurnEvent:
        text = event.transcript
        if event.turn != self._seam_turn or not text or text[0].isspace():
            return event
        before = self._text_so_far()
        if not before or before[-1].isspace() or self._provider_separates is False:
            return event
        return replace(event, transcript=" " + text)

    def _scrubbed_request_id(self, raw: str) -> str:
        """Scrubbed once per distinct id: every event of a connection carries the same one."""
        if self._request_id_cache is None or self._request_id_cache[0] != raw:
            self._request_id_cache = (raw, self._scrub(raw)[:MAX_REQUEST_ID_CHARS])
        return self._request_id_cache[1]

    def _publish(self, event: TurnEvent) -> None:
        request_id = None if event.request_id is None else self._scrubbed_request_id(event.request_id)
        if event.type == "session.error":
            self._emit_turn("session.error", error=event.error, request_id=request_id)
            return
        if event.type == "turn.end" and event.turn != self._connection_first_turn and event.transcript:
            self._provider_separates = event.transcript[0].isspace()
        event = self._seamed(event)
        if event.transcript is not None and self._oversized(event):
            return
        words = None if event.words is None else tuple(self._in_session_time(event.words))
        if words is not None and self._details_too_large(event, words):
            words = None  # optional details never cost a turn: its text alone fits, so it goes without them
        self._emit_turn(
            event.type,
            turn=event.turn,
            transcript=event.transcript,
            request_id=request_id,
            words=words,
            duration_ms=event.duration_ms,
            language=None if event.language is None else self._scrub(event.language)[:MAX_LANGUAGE_CHARS] or None,
        )
        if event.type == "turn.end":
            assert event.turn is not None and event.transcript is not None
            self.assembler.add_turn(event.turn, event.transcript)
            self._emit_transcript("turn", event.turn, event.transcript, "complete")

    def _in_session_time(self, words: tuple[WordTiming, ...]) -> list[WordTiming]:
        out = []
        for word in words:
            start = _ms(self.session_ms(word.start_ms))
            out.append(WordTiming(word.word, start, max(start, _ms(self.session_ms(word.end_ms)))))
        return out

    def _details_too_large(self, event: TurnEvent, words: tuple[WordTiming, ...]) -> bool:
        assert event.transcript is not None
        size = len(orjson.dumps(event.transcript)) + len(orjson.dumps([w.to_dict() for w in words]))
        return size > self.config.max_text_bytes

    def _oversized(self, event: TurnEvent) -> bool:
        """Provider text too large to publish: the session ends ``failed`` instead (its partition's other
        sessions are untouched). Checks the turn's text and, at a turn's end, the session's."""
        assert event.transcript is not None
        size = len(orjson.dumps(event.transcript))
        if event.type == "turn.end":
            size = max(size, len(orjson.dumps(self._text_so_far() + event.transcript)))
        limit = self.config.max_text_bytes
        if size <= limit:
            return False
        self._emit_turn(
            "session.error",
            error=ProviderErrorInfo(
                status_code=None,
                title="Output too large",
                message=f"a `{event.type}` would carry {size} bytes of transcript; the limit is {limit}",
                error_code="oversized_output",
                retryable=False,
            ),
        )
        self._end("failed")
        return True

    def _end(self, status: Status) -> None:
        self.status = status
        self.phase = "ended"
        if self.close_offset is None:  # the record being handled; offset 0 if it never handled one
            self.close_offset = max(self._next_offset - 1, 0)
        self._held.clear()
        self._emit_turn("session.end", status=status)
        self._emit_transcript("session", self.assembler.next_turn, self._text_so_far(), status)

    def _scrubbed(self, error: ProviderErrorInfo) -> ProviderErrorInfo:
        code = error.error_code
        return ProviderErrorInfo(
            status_code=error.status_code,
            title=self._scrub(error.title),
            message=self._scrub(error.message),
            error_code=None if code is None else self._scrub(code),
            retryable=error.retryable,
        )

    def _emit_turn(
        self,
        kind: TurnType,
        *,
        turn: int | None = None,
        transcript: str | None = None,
        error: ProviderErrorInfo | None = None,
        status: Status | None = None,
        request_id: str | None = None,
        words: tuple[WordTiming, ...] | None = None,
        duration_ms: float | None = None,
        language: str | None = None,
    ) -> None:
        record = TurnRecord(
            session_id=self.session_id,
            seq=self._turn_seq,
            type=kind,
            endpoint=self.format.endpoint,
            request_id=request_id or self.request_id,
            audio_ms=_ms(self.audio_ms),
            at=self._wall_ms(),
            turn=turn,
            transcript=transcript,
            error=None if error is None else self._scrubbed(error),
            status=status,
            words=words,
            duration_ms=duration_ms,
            language=language,
        )
        self._turn_seq += 1
        self._outputs.append(Output("turns", self.session_id, record, record.final))

    def _emit_transcript(self, kind: Literal["turn", "session"], turn: int, text: str, status: Status) -> None:
        record = TranscriptRecord(
            kind=kind,
            session_id=self.session_id,
            seq=self._transcript_seq,
            turn=turn,
            transcript=text,
            status=status,
            audio_ms=_ms(self.audio_ms),
            at=self._wall_ms(),
            end_at=self.end_at if kind == "session" else None,
        )
        self._transcript_seq += 1
        self._outputs.append(Output("transcripts", self.session_id, record, True))


def _ms(value: float) -> float:
    return int(value * 1000) / 1000
