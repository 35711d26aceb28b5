"""The analytics arithmetic, free of Kafka, Faust and DuckDB: how one output record changes a live
session's summary and the per-minute counters, and how the counters read back as statistics.

Live sessions and window counters are plain JSON-ready dicts, so that the Faust tables holding them
(changelog-backed) serialize them as they are. Every function returns a new dict and never mutates its
argument: a table only writes its changelog when a key is assigned.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.contract import DeadLetter, TranscriptRecord, TurnRecord

WINDOW_MS = 60_000
LATENCY = "latency_ms"  # the one window entry that is a list of samples, not a counter

# The counters of a window; `sessions_ended.<status>`, `dead_letters.<reason>` and `errors.<code>` add
# one counter per value seen.
SESSIONS_STARTED = "sessions_started"
SESSIONS_ENDED = "sessions_ended"
TURNS = "turns"
WORDS = "words"
AUDIO_S = "audio_s"
DEAD_LETTERS = "dead_letters"
ERRORS = "errors"

LiveSession = dict[str, Any]
Window = dict[str, Any]


APPLIED = "applied"  # in every table value: per source topic, the highest offset whose effect it holds


def fresh(value: Mapping[str, Any] | None, topic: str, offset: int) -> bool:
    """Whether the record at ``offset`` of ``topic`` is not yet in ``value`` (a table value carries, per
    topic, the highest offset it has taken; a key only ever sees records of one partition of a topic)."""
    return value is None or int(value.get(APPLIED, {}).get(topic, -1)) < offset


def applied(value: dict[str, Any], topic: str, offset: int) -> dict[str, Any]:
    """``value`` marked as holding the record at ``offset`` of ``topic``."""
    value[APPLIED] = {**value.get(APPLIED, {}), topic: offset}
    return value


def words(text: str) -> int:
    """Words of a transcript: whitespace-separated tokens."""
    return len(text.split())


def window_start(at_ms: int) -> int:
    """The start (epoch ms) of the tumbling minute holding ``at_ms``."""
    return at_ms - at_ms % WINDOW_MS


def error_code(record: TurnRecord) -> str:
    """A `session.error`'s code: the error code, else the HTTP status, else ``unknown``."""
    error = record.error
    if error is None:
        return "unknown"
    if error.error_code:
        return error.error_code
    return str(error.status_code) if error.status_code is not None else "unknown"


def new_session(session_id: str, endpoint: str, at: int) -> LiveSession:
    return {
        "session_id": session_id,
        "status": "open",
        "state": "listening",
        "endpoint": endpoint,
        "turn": None,
        "turn_text": "",
        "turns": 0,
        "words": 0,
        "audio_s": 0.0,
        "started_at": at,
        "last_at": at,
        "ended_at": None,
        "errors": [],
        "transcript": None,
        "end_at": None,
        "latency_ms": None,
    }


def apply_turn(session: LiveSession | None, record: TurnRecord) -> LiveSession:
    """The live session after one `stt.turns` record (a session first seen mid-stream starts here)."""
    out = dict(session) if session is not None else new_session(record.session_id, record.endpoint, record.at)
    out["last_at"] = max(out["last_at"], record.at)
    out["audio_s"] = max(out["audio_s"], record.audio_ms / 1000)
    ended = out["status"] != "open"
    kind = record.type
    if kind in ("turn.start", "turn.update", "turn.eager_end", "turn.resume") and not ended:
        out["state"] = {"turn.eager_end": "eager_end"}.get(kind, "speaking")
        out["turn"] = record.turn
        if kind == "turn.start":
            out["turn_text"] = ""
        elif record.transcript is not None:
            out["turn_text"] = record.transcript
    elif kind == "turn.end":
        out["turns"] += 1
        out["words"] += words(record.transcript or "")
        out["turn_text"] = ""
        out["turn"] = record.turn
        if not ended:
            out["state"] = "listening"
    elif kind == "session.error":
        out["errors"] = [*out["errors"], error_code(record)]
    elif kind == "session.end":
        assert record.status is not None
        out["status"] = record.status
        out["state"] = "ended"
        out["ended_at"] = record.at
    return out


def apply_final(session: LiveSession | None, record: TranscriptRecord) -> LiveSession:
    """The live session after its `kind=session` final: the final's status and transcript win."""
    assert record.kind == "session"
    out = dict(session) if session is not None else new_session(record.session_id, "auto", record.at)
    out["status"] = record.status
    out["state"] = "ended"
    out["transcript"] = record.transcript
    out["audio_s"] = record.audio_ms / 1000
    out["ended_at"] = out["ended_at"] or record.at
    out["last_at"] = max(out["last_at"], record.at)
    out["end_at"] = record.end_at
    out["latency_ms"] = latency_ms(record)
    return out


def latency_ms(record: TranscriptRecord) -> int | None:
    """`end` → session final: the final's production time minus the `end` record's timestamp."""
    return None if record.end_at is None else max(0, record.at - record.end_at)


def turn_counts(record: TurnRecord) -> dict[str, float]:
    """What one `stt.turns` record adds to its minute's counters."""
    if record.type == "session.start":
        return {SESSIONS_STARTED: 1}
    if record.type == "turn.end":
        return {TURNS: 1, WORDS: words(record.transcript or "")}
    if record.type == "session.error":
        return {f"{ERRORS}.{error_code(record)}": 1}
    if record.type == "session.end":
        return {f"{SESSIONS_ENDED}.{record.status}": 1}
    return {}


def final_counts(record: TranscriptRecord) -> dict[str, float]:
    """What a `kind=session` final adds to its minute's counters (its audio seconds)."""
    return {AUDIO_S: record.audio_ms / 1000} if record.kind == "session" else {}


def dead_letter_counts(letter: DeadLetter) -> dict[str, float]:
    return {f"{DEAD_LETTERS}.{letter.reason}": 1}


def add(window: Window | None, counts: Mapping[str, float], latency: int | None = None) -> Window:
    """A window with ``counts`` added (and one latency sample appended)."""
    out: Window = dict(window) if window is not None else {}
    for name, amount in counts.items():
        out[name] = out.get(name, 0) + amount
    if latency is not None:
        out[LATENCY] = [*out.get(LATENCY, []), latency]
    return out


def percentile(samples: list[int], fraction: float) -> int | None:
    """Nearest-rank percentile (None without samples)."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def merge(windows: Iterable[Window]) -> Window:
    """Several windows (e.g. one per partition of the same minute) as one."""
    out: Window = {}
    for window in windows:
        for name, value in window.items():
            if name == APPLIED:
                continue
            if name == LATENCY:
                out[LATENCY] = [*out.get(LATENCY, []), *value]
            else:
                out[name] = out.get(name, 0) + value
    return out


def stats(windows: Mapping[int, Window], now_ms: int, minutes: int) -> dict[str, Any]:
    """The last ``minutes`` minutes (the current one included), oldest first, each with its counters and
    latency p50/p95, and their totals."""
    last = window_start(now_ms)
    starts = [last - WINDOW_MS * k for k in range(minutes - 1, -1, -1)]
    rows = [_row(start, windows.get(start, {})) for start in starts]
    total = merge(windows.get(start, {}) for start in starts)
    return {"window_ms": WINDOW_MS, "minutes": rows, "total": _row(starts[0], total) | {"start": None}}


def _row(start: int, window: Window) -> dict[str, Any]:
    counts = {name: value for name, value in sorted(window.items()) if name not in (LATENCY, APPLIED)}
    samples = list(window.get(LATENCY, []))
    return {
        "start": start,
        "counts": counts,
        "latency_ms": {"n": len(samples), "p50": percentile(samples, 0.5), "p95": percentile(samples, 0.95)},
    }
