"""The input contract (`stt.audio` records) and the dead-letter record, as pure functions.

A record is parsed into an :class:`InputMessage` or rejected with :class:`Rejected`, whose ``reason``
is the machine code that the dead-letter record carries (see ``schemas/dead-letter.schema.json``).
Checks that need a session's history (duplicates, gaps, encoding changes, chunks after `end`) belong
to :mod:`pipeline.session`.

Input is hostile: :func:`parse` is total. For *any* key (bytes or None), header names (str) and header
values (bytes or None), and value (bytes or None) it returns an :class:`InputMessage` or raises
:class:`Rejected`, and its work is linear in the record's size (sizes and digit counts are checked
before anything is converted). Any other exception from :func:`parse` is a bug; the worker must still
not crash on it: it dead-letters the record with reason ``unparseable`` (:func:`unparseable`), passing
the exception text as ``error`` to :func:`dead_letter`.

:func:`dead_letter` builds a record that always fits a size budget: an oversized original value or
oversized headers are truncated, and the record says so (``value_truncated``, ``value_sha256``,
``headers_truncated``).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

import orjson

from pipeline.audio import ENCODINGS, Encoding, bytes_per_sample
from pipeline.errors import InputError

MessageType = Literal["audio", "finalize", "end"]
Endpoint = Literal["auto", "manual"]

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000
MAX_CHANNELS = 8
MAX_SEQ: Final = 10**18 - 1
"""Largest accepted ``seq``: every decimal of at most 18 digits. A digit count is what both the parser
(before ``int()``) and the JSON Schema pattern can check exactly, so the two agree. It leaves more than
8·10^18 of headroom below 2^63 - 1, so ``seq + 1`` (a checkpoint's ``next_input_seq``) and anything a
session derives from it stays a signed 64-bit integer for every reader of the checkpoints, and a
session that starts anywhere up to the limit can still be ended by a later ``seq`` up to it."""
DEFAULT_MODEL: dict[Endpoint, str] = {"auto": "ink-2", "manual": "ink-2"}

Reason = Literal[
    "missing_session_id",
    "bad_header",
    "bad_value",
    "unknown_encoding",
    "partial_sample",
    "encoding_changed",
    "after_end",
    "no_session",
    "oversized",
    "unparseable",
]
REASONS: Final[tuple[Reason, ...]] = get_args(Reason)
"""Every dead-letter reason code, as listed in ``schemas/dead-letter.schema.json``."""

ECHO_CHARS: Final = 64
"""An input value quoted in a :class:`Rejected` detail is its ``repr``, cut to this many characters."""
ERROR_CHARS: Final = 512
"""At most this many characters of an ``error`` go into a dead letter's ``detail``."""
DETAIL_CHARS: Final = 1024
"""A dead letter's ``detail`` is cut to this many characters."""
SESSION_ID_BYTES: Final = 1024
"""A dead letter carries a ``session_id`` only up to this many UTF-8 bytes (otherwise null)."""
HEADER_ECHO_CHARS: Final = 1024
"""A dead letter echoes each header name and value only up to this many characters."""
DEAD_LETTER_MAX_BYTES: Final = 1_000_000
"""Default budget of a serialized dead letter (its Kafka record value)."""
DEAD_LETTER_MIN_BYTES: Final = 16384
"""Smallest budget :func:`dead_letter` accepts: room for the fixed fields at their caps."""
_MARGIN: Final = 256  # slack under max_bytes, for a serializer that formats a little differently


class Rejected(InputError):
    """A record that must go to the dead-letter topic; ``reason`` is a stable machine code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def unparseable() -> Rejected:
    """The rejection for a record on which :func:`parse` raised something else (a bug, never input's fault).

    Use it as ``dead_letter(unparseable(), ..., error=f"{type(exc).__name__}: {exc}")``.
    """
    return Rejected("unparseable", "parsing the record raised an unexpected error (a worker bug)")


@dataclass(frozen=True, slots=True)
class InputLimits:
    """Size limits on an input record's key and headers; anything larger is rejected as ``oversized``."""

    max_key_bytes: int = 256
    max_header_bytes: int = 1024
    """Per header value."""
    max_header_name_bytes: int = 256

    def __post_init__(self) -> None:
        for name in ("max_key_bytes", "max_header_bytes", "max_header_name_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"InputLimits.{name} must be at least 1")


DEFAULT_LIMITS: Final = InputLimits()


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
    timestamp: int | None = None  # the Kafka record's timestamp (Unix epoch ms), when known


def echo(value: object) -> str:
    """``repr(value)`` cut to :data:`ECHO_CHARS` characters, for quoting untrusted input in a detail."""
    if isinstance(value, str | bytes) and len(value) > ECHO_CHARS:
        value = value[:ECHO_CHARS]  # repr of a huge value would cost its whole size first
    text = repr(value)
    return text if len(text) <= ECHO_CHARS else text[: ECHO_CHARS - 3] + "..."


def decode_headers(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, str | None]:
    """Headers as text; a header that is not UTF-8 is kept as None (and rejected by :func:`parse`).

    A name that occurs twice keeps its last value.
    """
    out: dict[str, str | None] = {}
    for name, raw in headers:
        try:
            out[name] = None if raw is None else bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            out[name] = None
    return out


def _check_sizes(key: bytes, headers: Sequence[tuple[str, bytes | None]], limits: InputLimits) -> None:
    if len(key) > limits.max_key_bytes:
        raise Rejected("oversized", f"the record key is {len(key)} bytes, more than {limits.max_key_bytes}")
    for entry in headers:
        if not isinstance(entry, tuple | list) or len(entry) != 2:
            raise Rejected("bad_header", f"a header is not a (name, value) pair: {echo(entry)}")
        name, raw = entry
        if not isinstance(name, str):
            raise Rejected("bad_header", f"a header name is not text: {echo(name)}")
        try:
            size = len(name.encode("utf-8"))
        except UnicodeEncodeError:
            raise Rejected("bad_header", f"the header name {echo(name)} is not UTF-8 text") from None
        if size > limits.max_header_name_bytes:
            raise Rejected(
                "oversized",
                f"the header name {echo(name)} is {size} bytes, more than {limits.max_header_name_bytes}",
            )
        if raw is None:
            continue
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise Rejected("bad_header", f"the value of header {echo(name)} is not bytes")
        if len(raw) > limits.max_header_bytes:
            raise Rejected(
                "oversized",
                f"header {echo(name)} is {len(raw)} bytes, more than {limits.max_header_bytes}",
            )


def _required(headers: dict[str, str | None], name: str) -> str:
    if name not in headers:
        raise Rejected("bad_header", f"missing header `{name}`")
    value = headers[name]
    if value is None:
        raise Rejected("bad_header", f"header `{name}` is not UTF-8 text")
    return value


def _int(headers: dict[str, str | None], name: str, low: int, high: int) -> int:
    """A canonical decimal (ASCII digits, no leading zero) within ``low..high``, checked before ``int()``."""
    raw = _required(headers, name)
    canonical = raw.isascii() and raw.isdigit() and (raw == "0" or not raw.startswith("0"))
    if not canonical:
        raise Rejected("bad_header", f"header `{name}` must be a decimal integer (no leading zeros), got {echo(raw)}")
    if len(raw) > len(str(high)):
        raise Rejected("bad_header", f"header `{name}` must be within {low}..{high}, got {len(raw)} digits")
    value = int(raw)
    if not low <= value <= high:
        raise Rejected("bad_header", f"header `{name}` must be within {low}..{high}, got {value}")
    return value


def parse(
    key: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None,
    value: bytes | None,
    *,
    limits: InputLimits = DEFAULT_LIMITS,
    timestamp: int | None = None,
) -> InputMessage:
    """Parse one `stt.audio` record (read with Kafka ``timestamp``); raises :class:`Rejected` with the
    dead-letter reason, nothing else."""
    if not key:
        raise Rejected("missing_session_id", "the record key (session id) is empty")
    headers = headers or ()
    _check_sizes(key, headers, limits)
    try:
        session_id = bytes(key).decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("missing_session_id", "the record key (session id) is not UTF-8") from None
    text = decode_headers(headers)
    kind = _required(text, "type")
    if kind not in ("audio", "finalize", "end"):
        raise Rejected("bad_header", f"header `type` must be audio, finalize or end, got {echo(kind)}")
    seq = _int(text, "seq", 0, MAX_SEQ)
    payload = bytes(value) if value else b""
    if kind != "audio":
        if payload:
            raise Rejected("bad_value", f"a `{kind}` record must have an empty value, got {len(payload)} bytes")
        return InputMessage(session_id, kind, seq, timestamp=timestamp)  # type: ignore[arg-type]  # kind checked
    encoding = _required(text, "encoding")
    if encoding not in ENCODINGS:
        raise Rejected("unknown_encoding", f"encoding {echo(encoding)} is not one of {', '.join(ENCODINGS)}")
    sample_rate = _int(text, "sample_rate", MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)
    channels = _int(text, "channels", 1, MAX_CHANNELS) if "channels" in text else 1
    endpoint = _required(text, "endpoint") if "endpoint" in text else "auto"
    if endpoint not in ("auto", "manual"):
        raise Rejected("bad_header", f"header `endpoint` must be auto or manual, got {echo(endpoint)}")
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
    return InputMessage(session_id, "audio", seq, payload, fmt, timestamp)


# -- dead letters ----------------------------------------------------------------------------------


def _clean_text(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with anything not encodable as UTF-8 escaped."""
    text = text[:limit]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")[:limit]
    return text


def _fits_utf8(text: str, limit: int) -> bool:
    """Whether ``text`` is UTF-8 text (no lone surrogates) of at most ``limit`` bytes."""
    if len(text) > limit:
        return False
    try:
        return len(text.encode("utf-8")) <= limit
    except UnicodeEncodeError:
        return False


def _header_name(name: object) -> str:
    if isinstance(name, bytes | bytearray | memoryview):
        name = bytes(name).decode("utf-8", "backslashreplace")
    elif not isinstance(name, str):
        name = repr(name)
    return _clean_text(name, HEADER_ECHO_CHARS)


def _header_value(raw: object) -> tuple[str | None, bool]:
    """A header value as text (None if not UTF-8), cut to :data:`HEADER_ECHO_CHARS`; True if it was cut."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        return None, False
    head = bytes(raw[: 4 * HEADER_ECHO_CHARS])  # at most 4 bytes per character
    cut = len(head) < len(raw)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if not (cut and exc.reason == "unexpected end of data"):
            return None, False
        text = head[: exc.start].decode("utf-8")  # the prefix ended inside a character
    if len(text) > HEADER_ECHO_CHARS:
        return text[:HEADER_ECHO_CHARS], True
    return text, cut


def _dead_letter_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> tuple[dict[str, str | None], bool]:
    """The headers as text, each name and value cut to :data:`HEADER_ECHO_CHARS`; True if any was cut."""
    out: dict[str, str | None] = {}
    cut = False
    for entry in headers or ():
        try:
            name, raw = entry
        except (TypeError, ValueError):
            cut = True
            continue
        text_name = _header_name(name)
        value, value_cut = _header_value(raw)
        cut = cut or value_cut or text_name != name
        out[text_name] = value
    return out, cut


def _json_size(value: object) -> int:
    return len(orjson.dumps(value))


def _fit_headers(headers: dict[str, str | None], budget: int) -> tuple[dict[str, str | None], bool]:
    """The longest prefix of ``headers`` whose JSON object fits ``budget`` bytes; True if any was dropped."""
    out: dict[str, str | None] = {}
    size = 2  # {}
    for name, value in headers.items():
        entry = _json_size(name) + 1 + _json_size(value) + (1 if out else 0)
        if size + entry > budget:
            return out, True
        out[name] = value
        size += entry
    return out, False


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
    max_bytes: int = DEAD_LETTER_MAX_BYTES,
    error: str | None = None,
) -> dict[str, Any]:
    """The `stt.dead-letter` record for a rejected input record: the original, plus a reason.

    Its ``orjson`` serialization is at most ``max_bytes`` (pass the room the dead-letter topic leaves
    for a record value, e.g. :meth:`pipeline.limits.SizeBudget.room`). When the original does not fit,
    header names and values are cut to :data:`HEADER_ECHO_CHARS` characters and trailing headers dropped
    (``headers_truncated``), then the value is cut to a prefix (``value_truncated``, with ``value_sha256``
    of the whole original). ``value_size`` is always the original value's length. ``error`` (for
    ``unparseable``) is appended to the detail, cut to :data:`ERROR_CHARS` characters. ``session_id``
    is null if it is longer than :data:`SESSION_ID_BYTES` or not UTF-8 text, so the record's
    ``session_id`` is safe to use as its Kafka key.

    :raises ValueError: if ``max_bytes`` is below :data:`DEAD_LETTER_MIN_BYTES`.
    """
    if max_bytes < DEAD_LETTER_MIN_BYTES:
        raise ValueError(f"max_bytes must be at least {DEAD_LETTER_MIN_BYTES}, got {max_bytes}")
    target = max_bytes - _MARGIN
    original = bytes(value) if value else b""
    if error is None:
        detail = _clean_text(rejected.detail, DETAIL_CHARS)
    else:
        detail = f"{_clean_text(rejected.detail, DETAIL_CHARS - ERROR_CHARS - 2)}: {_clean_text(error, ERROR_CHARS)}"
    if session_id is not None and not _fits_utf8(session_id, SESSION_ID_BYTES):
        session_id = None
    letter: dict[str, Any] = {
        "reason": _clean_text(rejected.reason, 64),
        "detail": detail,
        "session_id": session_id,
        "source": {"topic": _clean_text(topic, 255), "partition": partition, "offset": offset, "timestamp": timestamp},
        "headers": {},
        "value_b64": "",
        "value_size": len(original),
        "at": at,
    }
    all_headers, headers_cut = _dead_letter_headers(headers)
    if not headers_cut and len(original) * 4 // 3 < target:  # the whole original may fit: try it
        letter["headers"] = all_headers
        letter["value_b64"] = base64.b64encode(original).decode("ascii")
        if _json_size(letter) <= target:
            return letter
    # Measure the fixed part with every optional field present (at its final size), then share the rest.
    letter.update(headers={}, value_b64="", value_truncated=True, value_sha256="0" * 64, headers_truncated=True)
    room = target - _json_size(letter)
    value_need = -(-len(original) // 3) * 4
    letter["headers"], dropped = _fit_headers(all_headers, 2 + room - min(value_need, room // 2))
    room -= _json_size(letter["headers"]) - 2
    keep = max(0, room) // 4 * 3  # base64 turns every 3 bytes into 4 characters, none escaped in JSON
    if keep >= len(original):
        letter["value_b64"] = base64.b64encode(original).decode("ascii")
        del letter["value_truncated"], letter["value_sha256"]
    else:
        letter["value_b64"] = base64.b64encode(original[:keep]).decode("ascii")
        letter["value_sha256"] = hashlib.sha256(original).hexdigest()
    if not (headers_cut or dropped):
        del letter["headers_truncated"]
    return letter
