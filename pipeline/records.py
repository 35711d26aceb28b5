"""The input contract (`stt.audio` records) and the dead-letter record, as pure functions.

A record is parsed into an :class:`InputMessage` or rejected with :class:`Rejected`, whose ``reason``
is the machine code that the dead-letter record carries (see ``schemas/dead-letter.schema.json``).
Checks that need a session's history (duplicates, gaps, encoding changes, chunks after `end`) belong
to :mod:`pipeline.session`.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.audio import ENCODINGS, Encoding, bytes_per_sample
from pipeline.errors import InputError

MessageType = Literal["audio", "finalize", "end"]
Endpoint = Literal["auto", "manual"]

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000
MAX_CHANNELS = 8
DEFAULT_MODEL: dict[Endpoint, str] = {"auto": "ink-2", "manual": "ink-2"}


class Rejected(InputError):
    """A record that must go to the dead-letter topic; ``reason`` is a stable machine code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """What an audio chunk declares; a session keeps the format of the chunk that opened it."""

    encoding: Encoding
    sample_rate: int
    channels: int = 1
    endpoint: Endpoint = "auto"
    model: str = "ink-2"
    language: str | None = None

    def same_stream(self, other: AudioFormat) -> bool:
        """Whether ``other`` can continue a session opened with this format (encoding, rate, channels)."""
        return (self.encoding, self.sample_rate, self.channels) == (other.encoding, other.sample_rate, other.channels)


@dataclass(frozen=True, slots=True)
class InputMessage:
    session_id: str
    type: MessageType
    seq: int
    audio: bytes = b""
    format: AudioFormat | None = None


def decode_headers(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, str | None]:
    """Headers as text; a header that is not UTF-8 is kept as None (and rejected by :func:`parse`)."""
    out: dict[str, str | None] = {}
    for name, raw in headers:
        try:
            out[name] = None if raw is None else raw.decode("utf-8")
        except UnicodeDecodeError:
            out[name] = None
    return out


def _required(headers: dict[str, str | None], name: str) -> str:
    if name not in headers:
        raise Rejected("bad_header", f"missing header `{name}`")
    value = headers[name]
    if value is None:
        raise Rejected("bad_header", f"header `{name}` is not UTF-8 text")
    return value


def _int(headers: dict[str, str | None], name: str, low: int, high: int) -> int:
    raw = _required(headers, name)
    if not raw.isascii() or not raw.isdigit():
        raise Rejected("bad_header", f"header `{name}` must be a non-negative integer, got {raw!r}")
    value = int(raw)
    if not low <= value <= high:
        raise Rejected("bad_header", f"header `{name}` must be within {low}..{high}, got {value}")
    return value


def parse(key: bytes | None, headers: Sequence[tuple[str, bytes | None]], value: bytes | None) -> InputMessage:
    """Parse one `stt.audio` record; raises :class:`Rejected` with the dead-letter reason."""
    if not key:
        raise Rejected("missing_session_id", "the record key (session id) is empty")
    try:
        session_id = key.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("missing_session_id", "the record key (session id) is not UTF-8") from None
    text = decode_headers(headers)
    kind = _required(text, "type")
    if kind not in ("audio", "finalize", "end"):
        raise Rejected("bad_header", f"header `type` must be audio, finalize or end, got {kind!r}")
    seq = _int(text, "seq", 0, 2**63 - 1)
    payload = value or b""
    if kind != "audio":
        if payload:
            raise Rejected("bad_value", f"a `{kind}` record must have an empty value, got {len(payload)} bytes")
        return InputMessage(session_id, kind, seq)  # type: ignore[arg-type]  # kind checked above
    encoding = _required(text, "encoding")
    if encoding not in ENCODINGS:
        raise Rejected("unknown_encoding", f"encoding {encoding!r} is not one of {', '.join(ENCODINGS)}")
    sample_rate = _int(text, "sample_rate", MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)
    channels = _int(text, "channels", 1, MAX_CHANNELS) if "channels" in text else 1
    endpoint = text.get("endpoint") or "auto"
    if endpoint not in ("auto", "manual"):
        raise Rejected("bad_header", f"header `endpoint` must be auto or manual, got {endpoint!r}")
    fmt = AudioFormat(
        encoding=encoding,
        sample_rate=sample_rate,
        channels=channels,
        endpoint=endpoint,  # type: ignore[arg-type]
        model=text.get("model") or DEFAULT_MODEL[endpoint],  # type: ignore[index]
        language=text.get("language") or None,
    )
    frame = bytes_per_sample(fmt.encoding) * channels
    if len(payload) % frame:
        raise Rejected(
            "partial_sample",
            f"{len(payload)} bytes is not a whole number of {frame}-byte samples ({fmt.encoding}, {channels} ch)",
        )
    return InputMessage(session_id, "audio", seq, payload, fmt)


def dead_letter(
    rejected: Rejected,
    *,
    session_id: str | None,
    topic: str,
    partition: int,
    offset: int,
    timestamp: int | None,
    headers: Sequence[tuple[str, bytes | None]],
    value: bytes | None,
    at: int,
) -> dict[str, Any]:
    """The `stt.dead-letter` record for a rejected input record: the original, plus a reason."""
    return {
        "reason": rejected.reason,
        "detail": rejected.detail,
        "session_id": session_id,
        "source": {"topic": topic, "partition": partition, "offset": offset, "timestamp": timestamp},
        "headers": decode_headers(headers),
        "value_b64": base64.b64encode(value or b"").decode("ascii"),
        "at": at,
    }
