"""Per-partition commit watermark: the offset below which nothing is needed any more.

A partition's consumer position advances as records are read; *holds* keep the watermark back for
records whose work is not finished: an open session holds the offset it would have to be replayed
from, a record deferred for a session slot holds its own offset until it is decided (a dead letter
needs no hold: it commits in the same transaction as the offset that passes its record). The
committable offset is the lowest hold, or the position when nothing is held. Committing it never
loses work: everything below it has been published.
"""

from __future__ import annotations

from collections.abc import Hashable


class PartitionWatermark:
    """The commit watermark of one partition."""

    def __init__(self, position: int) -> None:
        self.position = position
        self._holds: dict[Hashable, int] = {}

    def consumed(self, offset: int) -> None:
        """The record at ``offset`` was read."""
        self.position = max(self.position, offset + 1)

    def hold(self, key: Hashable, offset: int) -> None:
        """``key`` needs everything from ``offset`` on; a new hold for the same key replaces the old."""
        self._holds[key] = offset

    def release(self, key: Hashable) -> None:
        """``key`` needs nothing any more (unknown keys are ignored)."""
        self._holds.pop(key, None)

    def held(self, key: Hashable) -> int | None:
        return self._holds.get(key)

    @property
    def holds(self) -> int:
        return len(self._holds)

    def committable(self) -> int:
        """The offset to commit: the next record a restarted consumer must read."""
        return min(min(self._holds.values(), default=self.position), self.position)
