"""The output records as types: what the worker publishes to `stt.turns`, `stt.transcripts`,
`stt.sessions` and `stt.dead-letter` (the JSON Schemas in ``schemas/`` are the contract).

Each record is a frozen dataclass with ``to_dict()`` (JSON-ready, in the published key order; optional
fields that are None are left out, nullable ones are kept as null), ``to_json()`` (the published
bytes) and a strict ``from_json()`` that raises :class:`~pipeline.errors.ContractError` on a missing,
unknown or wrongly typed field. Numbers typed ``number`` in the schema are read as float.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Self, TypeVar

import orjson

from pipeline.audio import ENCODINGS, Encoding
from pipeline.errors import ContractError, ProviderError
from pipeline.records import AudioFormat, Endpoint

SessionStatus = Literal["complete", "truncated", "failed"]
CheckpointStatus = Literal["open", "complete", "truncated", "failed"]
TurnType = Literal[
    "session.start",
    "turn.start",
    "turn.update",
    "turn.eager_end",
    "turn.resume",
    "turn.end",
    "session.error",
    "session.end",
]
TranscriptKind = Literal["turn", "session"]

SESSION_STATUSES: tuple[SessionStatus, ...] = ("complete", "truncated", "failed")
CHECKPOINT_STATUSES: tuple[CheckpointStatus, ...] = ("open", *SESSION_STATUSES)
TURN_TYPES: tuple[TurnType, ...] = (
    "session.start",
    "turn.start",
    "turn.update",
    "turn.eager_end",
    "turn.resume",
    "turn.end",
    "session.error",
    "session.end",
)
ENDPOINTS: tuple[Endpoint, ...] = ("auto", "manual")
_WITH_TURN = frozenset({"turn.start", "turn.update", "turn.eager_end", "turn.resume", "turn.end"})
_WITH_TRANSCRIPT = frozenset({"turn.update", "turn.eager_end", "turn.end"})

_T = TypeVar("_T")


# -- strict field readers ------------------------------------------------------------------------


def _object(data: bytes | str | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    if isinstance(data, bytes | str):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ContractError(f"{what}: not JSON ({exc})") from None
    if not isinstance(data, Mapping):
        raise ContractError(f"{what}: not a JSON object")
    return data


def _fields(data: Mapping[str, Any], what: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    missing = [name for name in required if name not in data]
    if missing:
        raise ContractError(f"{what}: missing {', '.join(missing)}")
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise ContractError(f"{what}: unknown field(s) {', '.join(map(repr, unknown))}")


def _wrong(what: str, name: str, expected: str, value: object) -> ContractError:
    return ContractError(f"{what}: `{name}` must be {expected}, got {type(value).__name__}")


def _str(data: Mapping[str, Any], name: str, what: str, *, nonempty: bool = False) -> str:
    value = data[name]
    if not isinstance(value, str) or (nonempty and not value):
        raise _wrong(what, name, "a non-empty string" if nonempty else "a string", value)
    return value


def _opt_str(data: Mapping[str, Any], name: str, what: str) -> str | None:
    return None if data.get(name) is None else _str(data, name, what)


def _int(data: Mapping[str, Any], name: str, what: str, *, minimum: int = 0) -> int:
    value = data[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _wrong(what, name, f"an integer >= {minimum}", value)
    return value


def _opt_int(data: Mapping[str, Any], name: str, what: str, *, minimum: int = 0) -> int | None:
    return None if data.get(name) is None else _int(data, name, what, minimum=minimum)


def _num(data: Mapping[str, Any], name: str, what: str) -> float:
    value = data[name]
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise _wrong(what, name, "a finite number >= 0", value)
    return float(value)


def _bool(data: Mapping[str, Any], name: str, what: str) -> bool:
    value = data[name]
    if not isinstance(value, bool):
        raise _wrong(what, name, "a boolean", value)
    return value


def _opt_bool(data: Mapping[str, Any], name: str, what: str) -> bool | None:
    return None if data.get(name) is None else _bool(data, name, what)


def _one_of(data: Mapping[str, Any], name: str, what: str, allowed: tuple[_T, ...]) -> _T:
    value = data[name]
    if not isinstance(value, str) or value not in allowed:
        raise ContractError(f"{what}: `{name}` must be one of {', '.join(map(str, allowed))}")
    return value


def _nested(data: Mapping[str, Any], name: str, what: str) -> Mapping[str, Any]:
    value = data[name]
    if not isinstance(value, Mapping):
        raise _wrong(what, name, "an object", value)
    return value


def _dumps(record: Mapping[str, Any]) -> bytes:
    return orjson.dumps(record)


# -- records -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProviderErrorInfo:
    """The ``error`` object of a ``session.error`` turn event (ours, or the STT provider's)."""

    status_code: int | None
    title: str
    message: str
    error_code: str | None
    retryable: bool

    @classmethod
    def from_error(cls, error: ProviderError) -> ProviderErrorInfo:
        return cls(error.status_code, error.title, error.message, error.error_code, error.retryable)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status_code": self.status_code,
            "title": self.title,
            "message": self.message,
            "error_code": self.error_code,
            "retryable": self.retryable,
        }

    def to_json(self) -> bytes:
        return _dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> Self:
        what = "error"
        obj = _object(data, what)
        _fields(obj, what, ("status_code", "title", "message", "retryable"), ("error_code",))
        return cls(
            status_code=_opt_int(obj, "status_code", what),
            title=_str(obj, "title", what),
            message=_str(obj, "message", what),
            error_code=_opt_str(obj, "error_code", what),
            retryable=_bool(obj, "retryable", what),
        )


@dataclass(frozen=True, slots=True)
class WordTiming:
    """One word of a turn with its audio span: ms of the session's input audio (see the schema)."""

    word: str
    start_ms: float
    end_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"word": self.word, "start_ms": self.start_ms, "end_ms": self.end_ms}

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> Self:
        what = "word"
        obj = _object(data, what)
        _fields(obj, what, ("word", "start_ms", "end_ms"))
        word = cls(_str(obj, "word", what, nonempty=True), _num(obj, "start_ms", what), _num(obj, "end_ms", what))
        if word.end_ms < word.start_ms:
            raise ContractError(f"{what}: `end_ms` {word.end_ms} is before `start_ms` {word.start_ms}")
        return word


def _words(data: Mapping[str, Any], name: str, what: str) -> tuple[WordTiming, ...]:
    value = data[name]
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise _wrong(what, name, "an array of objects", value)
    return tuple(WordTiming.from_json(item) for item in value)


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """One `stt.turns` record (``schemas/turn-event.schema.json``)."""

    session_id: str
    seq: int
    type: TurnType
    endpoint: Endpoint
    request_id: str | None
    audio_ms: float
    at: int
    turn: int | None = None
    transcript: str | None = None
    error: ProviderErrorInfo | None = None
    status: SessionStatus | None = None
    words: tuple[WordTiming, ...] | None = None
    duration_ms: float | None = None
    language: str | None = None

    @property
    def final(self) -> bool:
        """Whether the record needs exactly-once care (everything but turn.start/update/eager_end/resume)."""
        return self.type in ("turn.end", "session.end", "session.start", "session.error")

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "session_id": self.session_id,
            "seq": self.seq,
            "type": self.type,
            "endpoint": self.endpoint,
            "request_id": self.request_id,
            "audio_ms": self.audio_ms,
            "at": self.at,
        }
        if self.turn is not None:
            record["turn"] = self.turn
        if self.transcript is not None:
            record["transcript"] = self.transcript
        if self.words is not None:
            record["words"] = [word.to_dict() for word in self.words]
        if self.duration_ms is not None:
            record["duration_ms"] = self.duration_ms
        if self.language is not None:
            record["language"] = self.language
        if self.error is not None:
            record["error"] = self.error.to_dict()
        if self.status is not None:
            record["status"] = self.status
        return record

    def to_json(self) -> bytes:
        return _dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> Self:
        what = "turn event"
        obj = _object(data, what)
        _fields(
            obj,
            what,
            ("session_id", "seq", "type", "endpoint", "request_id", "audio_ms", "at"),
            ("turn", "transcript", "error", "status", "words", "duration_ms", "language"),
        )
        kind = _one_of(obj, "type", what, TURN_TYPES)
        for name in ("words", "duration_ms", "language"):
            if name in obj and kind not in _WITH_TRANSCRIPT:
                raise ContractError(f"{what}: `{name}` is not allowed on {kind}")
        for name, needed in (
            ("turn", kind in _WITH_TURN),
            ("transcript", kind in _WITH_TRANSCRIPT),
            ("error", kind == "session.error"),
            ("status", kind == "session.end"),
        ):
            if (name in obj) != needed:
                raise ContractError(f"{what}: `{name}` is {'required' if needed else 'not allowed'} on {kind}")
        return cls(
            session_id=_str(obj, "session_id", what, nonempty=True),
            seq=_int(obj, "seq", what),
            type=kind,
            endpoint=_one_of(obj, "endpoint", what, ENDPOINTS),
            request_id=_opt_str(obj, "request_id", what),
            audio_ms=_num(obj, "audio_ms", what),
            at=_int(obj, "at", what),
            turn=_int(obj, "turn", what) if "turn" in obj else None,
            transcript=_str(obj, "transcript", what) if "transcript" in obj else None,
            error=ProviderErrorInfo.from_json(_nested(obj, "error", what)) if "error" in obj else None,
            status=_one_of(obj, "status", what, SESSION_STATUSES) if "status" in obj else None,
            words=_words(obj, "words", what) if "words" in obj else None,
            duration_ms=_num(obj, "duration_ms", what) if "duration_ms" in obj else None,
            language=_str(obj, "language", what, nonempty=True) if "language" in obj else None,
        )


@dataclass(frozen=True, slots=True)
class TranscriptRecord:
    """One `stt.transcripts` record (``schemas/transcript.schema.json``)."""

    kind: TranscriptKind
    session_id: str
    seq: int
    turn: int
    transcript: str
    status: SessionStatus
    audio_ms: float
    at: int
    end_at: int | None = None  # kind=session: the input `end` record's Kafka timestamp, when it had one

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "kind": self.kind,
            "session_id": self.session_id,
            "seq": self.seq,
            "turn": self.turn,
            "transcript": self.transcript,
            "status": self.status,
            "audio_ms": self.audio_ms,
            "at": self.at,
        }
        if self.end_at is not None:
            record["end_at"] = self.end_at
        return record

    def to_json(self) -> bytes:
        return _dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> Self:
        what = "transcript"
        obj = _object(data, what)
        _fields(obj, what, ("kind", "session_id", "seq", "turn", "transcript", "status", "audio_ms", "at"), ("end_at",))
        kind: TranscriptKind = _one_of(obj, "kind", what, ("turn", "session"))
        if "end_at" in obj and kind != "session":
            raise ContractError(f"{what}: `end_at` is not allowed on kind=turn")
        return cls(
            kind=kind,
            session_id=_str(obj, "session_id", what, nonempty=True),
            seq=_int(obj, "seq", what),
            turn=_int(obj, "turn", what),
            transcript=_str(obj, "transcript", what),
            status=_one_of(obj, "status", what, SESSION_STATUSES),
            audio_ms=_num(obj, "audio_ms", what),
            at=_int(obj, "at", what),
            end_at=_int(obj, "end_at", what) if "end_at" in obj else None,
        )


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One `stt.sessions` record: a session's restart state (``schemas/session-checkpoint.schema.json``)."""

    session_id: str
    status: CheckpointStatus
    resume_offset: int
    next_seq: int
    next_turn: int
    next_transcript_seq: int
    next_input_seq: int
    transcript: str
    audio_ms: float
    close_offset: int | None
    endpoint: Endpoint
    encoding: Encoding
    sample_rate: int
    channels: int
    model: str
    language: str | None
    at: int
    # Whether the session's provider starts a connection's later turns with whitespace (the seam rule,
    # :mod:`pipeline.session`); None: not seen yet, and left out of the record.
    provider_separates: bool | None = None

    @property
    def format(self) -> AudioFormat:
        """The audio format the session was opened with."""
        return AudioFormat(
            encoding=self.encoding,
            sample_rate=self.sample_rate,
            channels=self.channels,
            endpoint=self.endpoint,
            model=self.model,
            language=self.language,
        )

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "session_id": self.session_id,
            "status": self.status,
            "resume_offset": self.resume_offset,
            "next_seq": self.next_seq,
            "next_turn": self.next_turn,
            "next_transcript_seq": self.next_transcript_seq,
            "next_input_seq": self.next_input_seq,
            "transcript": self.transcript,
            "audio_ms": self.audio_ms,
            "close_offset": self.close_offset,
            "endpoint": self.endpoint,
            "encoding": self.encoding,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "model": self.model,
            "language": self.language,
            "at": self.at,
        }
        if self.provider_separates is not None:
            record["provider_separates"] = self.provider_separates
        return record

    def to_json(self) -> bytes:
        return _dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> Self:
        what = "checkpoint"
        obj = _object(data, what)
        _fields(
            obj,
            what,
            (
                "session_id",
                "status",
                "resume_offset",
                "next_seq",
                "next_turn",
                "next_transcript_seq",
                "next_input_seq",
                "transcript",
                "audio_ms",
                "close_offset",
                "endpoint",
                "encoding",
                "sample_rate",
                "channels",
                "model",
                "language",
                "at",
            ),
            ("provider_separates",),
        )
        return cls(
            session_id=_str(obj, "session_id", what, nonempty=True),
            status=_one_of(obj, "status", what, CHECKPOINT_STATUSES),
            resume_offset=_int(obj, "resume_offset", what),
            next_seq=_int(obj, "next_seq", what),
            next_turn=_int(obj, "next_turn", what),
            next_transcript_seq=_int(obj, "next_transcript_seq", what),
            next_input_seq=_int(obj, "next_input_seq", what),
            transcript=_str(obj, "transcript", what),
            audio_ms=_num(obj, "audio_ms", what),
            close_offset=_opt_int(obj, "close_offset", what),
            endpoint=_one_of(obj, "endpoint", what, ENDPOINTS),
            encoding=_one_of(obj, "encoding", what, ENCODINGS),
            sample_rate=_int(obj, "sample_rate", what, minimum=1),
            channels=_int(obj, "channels", what, minimum=1),
            model=_str(obj, "model", what),
            language=_opt_str(obj, "language", what),
            at=_int(obj, "at", what),
            provider_separates=_bool(obj, "provider_separates", what) if "provider_separates" in obj else None,
        )


@dataclass(frozen=True, slots=True)
class DeadLetterSource:
    """Where a dead-lettered record was read from."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset, "timestamp": self.timestamp}

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> Self:
        what = "dead letter source"
        obj = _object(data, what)
        _fields(obj, what, ("topic", "partition", "offset", "timestamp"))
        return cls(
            topic=_str(obj, "topic", what, nonempty=True),
            partition=_int(obj, "partition", what),
            offset=_int(obj, "offset", what),
            timestamp=_opt_int(obj, "timestamp", what),
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One `stt.dead-letter` record (``schemas/dead-letter.schema.json``): a rejected input record.

    ``value_size`` is the original value's length. When the original did not fit the size budget,
    ``value_truncated`` and ``value_sha256`` (of the whole value) say so, and ``headers_truncated``
    when headers were cut; those three are left out of the record otherwise.
    """

    reason: str
    detail: str
    session_id: str | None
    source: DeadLetterSource
    headers: dict[str, str | None]
    value_b64: str
    value_size: int
    at: int
    value_truncated: bool | None = None
    value_sha256: str | None = None
    headers_truncated: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "reason": self.reason,
            "detail": self.detail,
            "session_id": self.session_id,
            "source": self.source.to_dict(),
            "headers": dict(self.headers),
            "value_b64": self.value_b64,
            "value_size": self.value_size,
            "at": self.at,
        }
        for name, value in (
            ("value_truncated", self.value_truncated),
            ("value_sha256", self.value_sha256),
            ("headers_truncated", self.headers_truncated),
        ):
            if value is not None:
                record[name] = value
        return record

    def to_json(self) -> bytes:
        return _dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str | Mapping[str, Any]) -> Self:
        what = "dead letter"
        obj = _object(data, what)
        _fields(
            obj,
            what,
            ("reason", "detail", "session_id", "source", "headers", "value_b64", "value_size", "at"),
            ("value_truncated", "value_sha256", "headers_truncated"),
        )
        headers = _nested(obj, "headers", what)
        if not all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in headers.items()):
            raise ContractError(f"{what}: `headers` must be an object of strings or nulls")
        truncated = _opt_bool(obj, "value_truncated", what)
        headers_cut = _opt_bool(obj, "headers_truncated", what)
        if truncated is False or headers_cut is False:
            raise ContractError(f"{what}: `value_truncated`/`headers_truncated` are present only as true")
        sha = _opt_str(obj, "value_sha256", what)
        if (truncated is None) != (sha is None):
            raise ContractError(f"{what}: `value_truncated` and `value_sha256` come together")
        return cls(
            reason=_str(obj, "reason", what, nonempty=True),
            detail=_str(obj, "detail", what),
            session_id=_opt_str(obj, "session_id", what),
            source=DeadLetterSource.from_json(_nested(obj, "source", what)),
            headers=dict(headers),
            value_b64=_str(obj, "value_b64", what),
            value_size=_int(obj, "value_size", what),
            at=_int(obj, "at", what),
            value_truncated=truncated,
            value_sha256=sha,
            headers_truncated=headers_cut,
        )


OutputRecord = TurnRecord | TranscriptRecord
"""What a session publishes."""
