"""The contract between the emulator's protocol core and a recognition engine.

An engine makes one :class:`Recognizer` per WebSocket connection. The protocol core decodes the
client's bytes into mono float32 samples in [-1, 1] at the declared sample rate and feeds them, in
arrival order, to the recognizer. The recognizer answers with :data:`EngineEvent` values in audio-time
order. Audio time is measured in milliseconds from the first sample of the connection.

The recognizer decides text *and spacing*: every :class:`Text` delta is verbatim, to be appended as is.
The first text of a connection has no leading space; every later word carries its own separator
(e.g. ``" world"``). The protocol core never adds or strips whitespace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True, slots=True)
class SpeechStart:
    """Voice activity began at ``at_ms``."""

    at_ms: float


@dataclass(frozen=True, slots=True)
class SpeechEnd:
    """Voice activity stopped at ``at_ms`` (a word or an utterance ended; silence follows)."""

    at_ms: float


@dataclass(frozen=True, slots=True)
class Text:
    """Recognized text, verbatim, to append to the current utterance; known at audio time ``at_ms``."""

    text: str
    at_ms: float


EngineEvent = SpeechStart | SpeechEnd | Text


class Recognizer(Protocol):
    """Streaming recognition state for one connection."""

    def feed(self, samples: NDArray[np.float32]) -> list[EngineEvent]:
        """Consume the next samples; return what became known, in audio-time order."""
        ...

    def flush(self) -> list[EngineEvent]:
        """Force out text for all audio fed so far (used on ``finalize``, turn end and ``close``).

        Audio that cannot be recognized yet (e.g. an incomplete symbol) may be kept for later feeds.
        """
        ...


class Engine(Protocol):
    """A recognition engine: a factory of per-connection recognizers."""

    name: str

    def recognizer(self, sample_rate: int) -> Recognizer:
        """A fresh recognizer for a connection whose audio arrives at ``sample_rate`` Hz."""
        ...
