"""Word timing for the emulator: engine events in, timed words out (streaming, no I/O).

Used by the batch endpoint (``words`` of `POST /stt`) and by the manual realtime endpoint (``words`` of
each `transcript` event), so both time words the same way.

A word's time comes from the engine's voice activity: a *span* runs from a :class:`SpeechStart` to its
:class:`SpeechEnd`, and the words of the text recognized for that span share it in proportion to their
length. Text that arrives while a span is open belongs to it (the tones engine: one span per word, so
its times are exact); text that arrives after a span closed belongs to that closed span (the whisper
engine, which ends a segment before transcribing it). :meth:`WordTimer.cut` splits an open span at a
point, so that text made final mid-word (a `finalize`) is timed now and its continuation later.
Times are milliseconds from the first sample of the connection.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.emulator.engines.base import EngineEvent, SpeechEnd, SpeechStart, Text


@dataclass(frozen=True, slots=True)
class TimedWord:
    """One word (a whitespace-free token of the verbatim text) and its audio span in ms."""

    word: str
    start_ms: float
    end_ms: float


def _share(text: str, start_ms: float, end_ms: float) -> list[TimedWord]:
    """The tokens of ``text``, sharing ``[start_ms, end_ms]`` in proportion to their length."""
    tokens = text.split()
    total = sum(len(t) for t in tokens)
    out: list[TimedWord] = []
    at = start_ms
    for token in tokens:
        step = (end_ms - start_ms) * len(token) / total
        out.append(TimedWord(token, at, at + step))
        at += step
    return out


class WordTimer:
    """Streaming word timer for one connection (see the module docstring).

    Every token of the text fed is eventually returned by :meth:`take` exactly once, in order, except
    that a word split by :meth:`cut` comes out as its two parts.
    """

    def __init__(self) -> None:
        self._open_from: float | None = None  # start of the open span
        self._open_text = ""
        self._last_span: tuple[float, float] | None = None  # the last closed span
        self._done: list[TimedWord] = []

    def feed(self, events: Iterable[EngineEvent]) -> None:
        """Consume engine events, in order."""
        for event in events:
            if isinstance(event, SpeechStart):
                self._open_from, self._open_text = event.at_ms, ""
            elif isinstance(event, SpeechEnd):
                if self._open_from is not None:
                    self._close(event.at_ms)
            elif isinstance(event, Text):
                if self._open_from is not None:
                    self._open_text += event.text
                elif self._last_span is not None:
                    self._done.extend(_share(event.text, *self._last_span))
                else:  # text without any voice activity: a zero-length word at the text's time
                    self._done.extend(_share(event.text, event.at_ms, event.at_ms))

    def cut(self, at_ms: float) -> None:
        """Time the open span's text so far as ending at ``at_ms``; the span goes on from there."""
        if self._open_from is None or not self._open_text.split():
            return
        at_ms = max(at_ms, self._open_from)
        self._close(at_ms)
        self._open_from = at_ms

    def take(self) -> list[TimedWord]:
        """The words timed since the last take."""
        out, self._done = self._done, []
        return out

    def _close(self, end_ms: float) -> None:
        assert self._open_from is not None
        self._last_span = (self._open_from, end_ms)
        self._done.extend(_share(self._open_text, self._open_from, end_ms))
        self._open_from, self._open_text = None, ""
