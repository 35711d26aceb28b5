"""Fault injection for the emulator: which failures a new connection will suffer.

Tests (in-process, via :attr:`Emulator.faults`) and the CLI flags add rules; each new connection is
assigned its faults when it opens. Faults trigger on *audio time* received, so they are reproducible:

- ``drop``: the TCP connection is aborted without a close frame (an abnormal close, 1006 at the client).
- ``error``: a Cartesia-shaped `error` event with ``status_code`` (default 503), then close 1011
  (5xx) or 1008 (4xx).
- ``delay``: every server event is held back ``delay_ms`` before it is sent.

Random drops: with a seed, each connection is dropped with probability ``probability`` at an audio
time drawn uniformly from ``[min_audio_ms, max_audio_ms]``; the draw depends only on the seed and the
connection's ordinal, so a run is repeatable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from pipeline.emulator.params import Endpoint

FaultKind = Literal["drop", "error", "delay"]


@dataclass(slots=True)
class Fault:
    """A rule applying to the next ``connections`` new connections (None: to every one)."""

    kind: FaultKind
    at_audio_ms: float = 0.0
    status_code: int = 503
    delay_ms: float = 0.0
    connections: int | None = 1
    endpoint: Endpoint | None = None


@dataclass(frozen=True, slots=True)
class RandomDrops:
    seed: int
    probability: float = 1.0
    min_audio_ms: float = 500.0
    max_audio_ms: float = 10_000.0


@dataclass(frozen=True, slots=True)
class ConnectionFaults:
    """What one connection will suffer."""

    drop_at_ms: float | None = None
    error_at_ms: float | None = None
    error_status: int = 503
    delay_ms: float = 0.0

    def due(self, audio_ms: float) -> FaultKind | None:
        """The fault to trigger now that ``audio_ms`` of audio has been received, if any."""
        if self.drop_at_ms is not None and audio_ms >= self.drop_at_ms:
            return "drop"
        if self.error_at_ms is not None and audio_ms >= self.error_at_ms:
            return "error"
        return None


class FaultPlan:
    """The emulator's fault rules; thread-unsafe, used from the server's event loop."""

    def __init__(self) -> None:
        self._rules: list[Fault] = []
        self._random: RandomDrops | None = None
        self._ordinal = 0

    def add(self, fault: Fault) -> None:
        self._rules.append(fault)

    def random_drops(self, drops: RandomDrops | None) -> None:
        self._random = drops

    def clear(self) -> None:
        self._rules.clear()
        self._random = None

    def assign(self, endpoint: Endpoint) -> ConnectionFaults:
        """Faults for a connection opening now on ``endpoint``.

        Rules queue up: the connection takes the first matching rule of each kind (consuming one of
        its uses), so N single-use rules of a kind hit the next N connections.
        """
        self._ordinal += 1
        drop_at = error_at = None
        status = 503
        delay = 0.0
        taken: set[FaultKind] = set()
        for rule in self._rules:
            if rule.endpoint not in (None, endpoint) or rule.connections == 0 or rule.kind in taken:
                continue
            taken.add(rule.kind)
            if rule.connections is not None:
                rule.connections -= 1
            if rule.kind == "drop":
                drop_at = rule.at_audio_ms if drop_at is None else min(drop_at, rule.at_audio_ms)
            elif rule.kind == "error":
                error_at, status = rule.at_audio_ms, rule.status_code
            else:
                delay = max(delay, rule.delay_ms)
        self._rules = [r for r in self._rules if r.connections != 0]
        if self._random is not None:
            rng = random.Random(f"{self._random.seed}:{self._ordinal}")
            if rng.random() < self._random.probability:
                at = rng.uniform(self._random.min_audio_ms, self._random.max_audio_ms)
                drop_at = at if drop_at is None else min(drop_at, at)
        return ConnectionFaults(drop_at_ms=drop_at, error_at_ms=error_at, error_status=status, delay_ms=delay)
