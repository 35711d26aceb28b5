"""Whether the STT service could be reached lately: wraps the worker's socket opener and notes, in
wall time, the last connection that opened and the last one that could not (readiness reads both)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

A = TypeVar("A")
C = TypeVar("C")


class SttLink:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.last_ok: float | None = None
        self.last_failure: float | None = None

    def watch(self, connect: Callable[[A], Awaitable[C]]) -> Callable[[A], Awaitable[C]]:
        """``connect``, noting each outcome."""

        async def watched(arg: A) -> C:
            try:
                socket = await connect(arg)
            except Exception:
                self.last_failure = self._clock()
                raise
            self.last_ok = self._clock()
            return socket

        return watched
