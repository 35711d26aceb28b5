"""Three fixes for faust-streaming 0.15.3 (with aiokafka 0.14), applied when the analytics app is built.
Without them a kill -9 and restart lost records (found by tests/integration/test_analytics.py: a
`turn.end` missing from both the tables and the store, which only a record never processed explains).

1. Skipped records were acknowledged. A stream drops a record fetched under an older consumer
   generation, or while flow control is paused (during a rebalance and table recovery), and *acks* it
   "so that the lag does not grow"; the next commit then moves the group's offset past a record no agent
   has seen. The fix: a record that no stream has taken (``message.tracked`` is false) is not acked; it is
   read again from the committed offset after the rebalance.
2. Gap accounting with transactional input: the consumer records the offsets it never receives (a
   transaction's commit marker) as a *gap* from the last offset read to the new record's offset,
   inclusive. The new record's offset is then counted twice, the run of consecutive offsets breaks there,
   and each commit advances the committed offset past only one marker: with a worker committing every
   200 ms the committed offset falls ever further behind (measured: 62 committed of ~75 processed after a
   minute), so a restart replays ever more. The fix ends the gap before the record that revealed it.
3. After a rebalance, recovery (both of its paths: with and without tables to restore) resumed
   fetching the stream partitions *before* seeking them to their committed offsets. Records fetched in
   between were processed, the seek then rewound, and the consumer dropped every re-fetched record below
   the highest offset read so far ("DROPPED MESSAGE ROFF" in its dev log), including records it had
   skipped in between: lost. The fix seeks first and then resumes fetching.
"""

from __future__ import annotations

import asyncio
from typing import Any

from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer

_APPLIED = "_stt_fixes_applied"


def apply() -> None:
    """Patch :class:`faust.transport.consumer.Consumer` once (idempotent)."""
    if getattr(Consumer, _APPLIED, False):
        return
    add_gap = Consumer._add_gap
    ack = Consumer.ack

    async def _add_gap(self: Consumer, tp: Any, offset_from: int, offset_to: int) -> None:
        # Called with the offset of the record just received as `offset_to`: that one is not missing.
        await add_gap(self, tp, offset_from, offset_to - 1)

    def _ack(self: Consumer, message: Any) -> bool:
        if not message.tracked:
            return False  # skipped by the stream, never processed: it must be read again
        return bool(ack(self, message))

    Consumer._add_gap = _add_gap  # type: ignore[method-assign]
    Consumer.ack = _ack  # type: ignore[method-assign]
    Recovery._resume_streams = _resume_streams  # type: ignore[method-assign]
    Recovery.on_recovery_completed = _on_recovery_completed  # type: ignore[method-assign]
    setattr(Consumer, _APPLIED, True)


async def _resume_streams(self: Any, generation_id: int = 0) -> None:
    """``Recovery._resume_streams`` of faust-streaming 0.15.3 with the seek moved before the resume."""
    app = self.app
    consumer = app.consumer
    await app.on_rebalance_complete.send()
    assignment = consumer.assignment()
    if app.consumer_generation_id != generation_id:
        self.log.warning("Recovery rebalancing again")
        return
    if assignment:
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
    else:
        self.log.info("Resuming streams with empty assignment")
    self.completed.set()
    self.log.info("Resuming flow...")
    app.flow_control.resume()
    consumer.resume_flow()
    await app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    self.tables.on_standbys_ready()
    app.on_rebalance_end()
    self.log.info("Worker ready")


async def _on_recovery_completed(self: Any, generation_id: int = 0) -> None:
    """``Recovery.on_recovery_completed`` of faust-streaming 0.15.3 with the seek moved before the resume."""
    app = self.app
    consumer = app.consumer
    self.log.info("Restore complete!")
    await app.on_rebalance_complete.send()
    self._set_recovery_ended()
    callbacks = [
        asyncio.ensure_future(
            table.on_recovery_completed(self.actives_for_table[table], self.standbys_for_table[table])
        )
        for table in self.tables.values()
    ]
    if callbacks:
        await asyncio.wait(callbacks)
    assignment = consumer.assignment()
    if app.consumer_generation_id != generation_id:
        self.log.warning(f"Recovery rebalancing again app id {app.consumer_generation_id} param {generation_id}")
        return
    if assignment:
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
    consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
    self.completed.set()
    app.flow_control.resume()
    consumer.resume_flow()
    await app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    if not app.assignor.assigned_standbys():
        self.tables.on_standbys_ready()
    app.on_rebalance_end()
    self.log.info("Worker ready")
