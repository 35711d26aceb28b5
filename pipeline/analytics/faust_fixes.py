"""A fix for faust-streaming 0.15.3, applied when the analytics app is built.

Gap accounting with transactional input: the consumer records the offsets it never receives (a
transaction's commit marker) as a *gap* from the last offset read to the new record's offset,
inclusive. The new record's offset is then counted twice when offsets are merged, the run of
consecutive offsets breaks there, and each commit advances the committed offset past only one
marker. With a worker committing every 200 ms the committed offset falls further and further behind
what was processed (measured: 62 committed of ~75 processed within a minute), so a restart replays
ever more. The fix makes the gap end before the record that revealed it.
"""

from __future__ import annotations

from typing import Any

from faust.transport.consumer import Consumer

_APPLIED = "_stt_gap_fix"


def apply() -> None:
    """Patch :meth:`Consumer._add_gap` once (idempotent)."""
    if getattr(Consumer, _APPLIED, False):
        return
    original = Consumer._add_gap

    async def _add_gap(self: Consumer, tp: Any, offset_from: int, offset_to: int) -> None:
        # Called with the offset of the record just received as `offset_to`; that one is not missing.
        await original(self, tp, offset_from, offset_to - 1)

    Consumer._add_gap = _add_gap  # type: ignore[method-assign]
    setattr(Consumer, _APPLIED, True)
