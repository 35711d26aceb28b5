"""Log lines: plain text for a terminal, or one JSON object a line for a log collector.

stdlib :mod:`logging` with a JSON formatter, not structlog: every module already logs through
``logging.getLogger`` (and so do aiokafka and websockets), one formatter covers all of them, and the
worker gains no dependency. Context that a line is about (``session_id``, ``partition``, ``offset``)
comes from :func:`log_context` (context variables: an asyncio task keeps its own) or from a call's
``extra=``; JSON lines carry them as fields, text lines append them.

Every line, whatever its format, passes through the ``secrets`` redaction last: a key or password that
reached a message by any path shows as ``***``.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

CONTEXT_FIELDS = ("session_id", "partition", "offset")
_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("stt_log_context", default=None)


def set_context(**fields: Any) -> None:
    """From now on, every line logged in this task (or thread) carries ``fields`` and no other context:
    what a long-lived task (a session's) calls first."""
    _CONTEXT.set({k: v for k, v in fields.items() if v is not None})


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Attach ``fields`` to lines logged inside the block."""
    token = _CONTEXT.set({**(_CONTEXT.get() or {}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def _context_of(record: logging.LogRecord) -> dict[str, Any]:
    fields = dict(_CONTEXT.get() or {})
    for name in CONTEXT_FIELDS:
        value = record.__dict__.get(name)
        if value is not None:
            fields[name] = value
    return fields


class _Redacting(logging.Formatter):
    def __init__(self, secrets: Iterable[str], fmt: str | None = None) -> None:
        super().__init__(fmt)
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


class TextFormatter(_Redacting):
    """``time LEVEL logger: message [session_id=… partition=… offset=…]``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(secrets, "%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = _context_of(record)
        if context:
            line += " [" + " ".join(f"{k}={v}" for k, v in context.items()) + "]"
        return self.redact(line)


class JsonFormatter(_Redacting):
    """One JSON object a line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, the context
    fields where they apply, and ``exc`` with the traceback of a logged exception."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(secrets)

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.redact(record.getMessage()),
        }
        line.update(_context_of(record))
        if record.exc_info:
            line["exc"] = self.redact(self.formatException(record.exc_info))
        return self.redact(orjson.dumps(line, default=str).decode())


def configure(level: str, fmt: str, secrets: Iterable[str] = ()) -> None:
    """Root logging for a command: ``fmt`` is ``text`` or ``json``; ``secrets`` never appear in a line."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(secrets) if fmt == "json" else TextFormatter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
