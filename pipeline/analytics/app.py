"""The Faust app: agents over `stt.turns`, `stt.transcripts` and `stt.dead-letter` that keep two
changelog-backed tables (live sessions; per-minute counters) and write the DuckDB store.

``processing_guarantee="exactly_once"`` makes Faust's consumer read ``read_committed`` (an aborted
worker transaction never arrives here) and writes the tables' changelogs and the consumed offsets in
the same transactions. That alone does not make the tables exact in faust-streaming 0.15.3: a
changelog write is buffered and may land in a later transaction than the offset that covers it, or an
earlier one. So each record's writes are awaited before the record is acknowledged (its offset can only
commit with or after them), and every table value carries the offsets it has taken
(:func:`pipeline.analytics.core.fresh`): a record replayed after a crash changes no key twice.

The store is written before the record is acknowledged, with idempotent inserts. Both tables are
written under the partition of the record being processed: live sessions are keyed by session id,
like every topic read here; the counters by ``<minute>:<partition>``, added up by readers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import faust
from faust.types import FutureMessage

from pipeline.analytics import core, faust_fixes
from pipeline.analytics.store import Store
from pipeline.contract import DeadLetter, TranscriptRecord, TurnRecord
from pipeline.errors import ContractError
from pipeline.settings import Settings

log = logging.getLogger("pipeline.analytics")

SWEEP_INTERVAL_S = 5.0  # how often a partition's ended sessions and old minutes are looked at
WINDOW_KEEP_MS = 24 * 3600 * 1000  # per-minute counters older than this are dropped


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class TrackedTable(faust.Table):  # type: ignore[type-arg]
    """A table that keeps the changelog sends of its writes until :meth:`sent` hands them over."""

    def send_changelog(self, *args: Any, **kwargs: Any) -> FutureMessage:
        fut = super().send_changelog(*args, **kwargs)
        self.__dict__.setdefault("_pending_sends", []).append(fut)
        return fut

    def sent(self) -> list[FutureMessage]:
        pending: list[FutureMessage] = self.__dict__.setdefault("_pending_sends", [])
        taken = list(pending)
        pending.clear()
        return taken


class Analytics:
    """The app, its tables and the store, wired together (the web views read through it)."""

    def __init__(self, settings: Settings, store: Store, clock_ms: Callable[[], int] = now_ms) -> None:
        self.settings = settings
        self.store = store
        self.clock_ms = clock_ms
        self.app = make_app(settings)
        partitions = settings.topic_partitions
        self.live = cast(TrackedTable, self.app.Table("live-sessions", default=None, partitions=partitions))
        self.windows = cast(TrackedTable, self.app.Table("minute-counters", default=None, partitions=partitions))
        self.rejected = 0
        self._swept: dict[int, float] = {}
        raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
        turns = self.app.topic(settings.turns_topic, **raw)
        transcripts = self.app.topic(settings.transcripts_topic, **raw)
        letters = self.app.topic(settings.dead_letter_topic, **raw)
        self.app.agent(turns, name="turns")(self._turns_agent)
        self.app.agent(transcripts, name="transcripts")(self._transcripts_agent)
        self.app.agent(letters, name="dead-letters")(self._letters_agent)
        from pipeline.analytics import web

        web.register(self)

    # -- agents (thin: decode, then the pure core) ------------------------------------------------

    async def _turns_agent(self, stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            try:
                record = TurnRecord.from_json(message.value)
            except ContractError as exc:
                self._reject(message, exc)
                continue
            self.on_turn(record, message.topic, message.partition, message.offset, _ms(message.timestamp))
            await self._written()

    async def _transcripts_agent(self, stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            try:
                record = TranscriptRecord.from_json(message.value)
            except ContractError as exc:
                self._reject(message, exc)
                continue
            self.on_transcript(record, message.topic, message.partition, message.offset, _ms(message.timestamp))
            await self._written()

    async def _letters_agent(self, stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            try:
                letter = DeadLetter.from_json(message.value)
            except ContractError as exc:
                self._reject(message, exc)
                continue
            self._count(message.topic, message.partition, message.offset, letter.at, core.dead_letter_counts(letter))
            self._sweep(message.partition)
            await self._written()

    async def _written(self) -> None:
        """Wait until this record's table writes are sent (in the open transaction): only then may the
        agent take the next record, which acknowledges this one."""
        pending = [*self.live.sent(), *self.windows.sent()]
        if pending:
            await asyncio.gather(*pending)

    # -- what one record does -----------------------------------------------------------------------

    def on_turn(self, record: TurnRecord, topic: str, partition: int, offset: int, kafka_ts: int | None) -> None:
        before = self.live.get(record.session_id)
        if core.fresh(before, topic, offset):
            session = core.applied(core.apply_turn(before, record), topic, offset)
            session["partition"] = partition
            self.live[record.session_id] = session
        if record.type == "turn.end":
            self.store.add_turn(record, kafka_ts)
        self._count(topic, partition, offset, record.at, core.turn_counts(record))
        self._sweep(partition)

    def on_transcript(
        self, record: TranscriptRecord, topic: str, partition: int, offset: int, kafka_ts: int | None
    ) -> None:
        if record.kind != "session":
            return  # a turn's text arrives as its `turn.end` on stt.turns
        before = self.live.get(record.session_id)
        if core.fresh(before, topic, offset):
            session = core.applied(core.apply_final(before, record), topic, offset)
            session["partition"] = partition
            self.live[record.session_id] = session
        self.store.add_session(
            record,
            kafka_ts,
            endpoint=None if before is None else before["endpoint"],
            started_at=None if before is None else before["started_at"],
        )
        self._count(topic, partition, offset, record.at, core.final_counts(record), core.latency_ms(record))
        self._sweep(partition)

    def _count(
        self,
        topic: str,
        partition: int,
        offset: int,
        at: int,
        counts: dict[str, float],
        latency: int | None = None,
    ) -> None:
        if not counts and latency is None:
            return
        key = f"{core.window_start(at)}:{partition}"
        before = self.windows.get(key)
        if core.fresh(before, topic, offset):
            self.windows[key] = core.applied(core.add(before, counts, latency), topic, offset)

    def _sweep(self, partition: int) -> None:
        """Drop this partition's sessions ended more than ``STT_ANALYTICS_KEEP_S`` ago (the store keeps
        them) and its counters older than a day. Only under a record of that partition: a table's
        changelog is written to the partition of the record being processed."""
        now = time.monotonic()
        if now - self._swept.get(partition, 0.0) < SWEEP_INTERVAL_S:
            return
        self._swept[partition] = now
        wall = self.clock_ms()
        keep_ms = self.settings.analytics_keep_s * 1000
        gone = [
            key
            for key, session in self.live.items()
            if session["partition"] == partition
            and session["status"] != "open"
            and session["transcript"] is not None  # its final, and so its store row, has been taken
            and wall - session["ended_at"] > keep_ms
        ]
        suffix = f":{partition}"
        gone_windows = [
            key for key in self.windows if key.endswith(suffix) and wall - int(key.split(":")[0]) > WINDOW_KEEP_MS
        ]
        for key in gone:
            del self.live[key]
        for key in gone_windows:
            del self.windows[key]

    def _reject(self, message: Any, exc: ContractError) -> None:
        self.rejected += 1
        log.warning("%s p%d@%d skipped: %s", message.topic, message.partition, message.offset, exc)

    # -- reads (web views, summaries) -----------------------------------------------------------------

    def sessions(self, *, everything: bool = False) -> list[dict[str, Any]]:
        found = [_shown(s) for s in self.live.values() if everything or s["status"] == "open"]
        return sorted(found, key=lambda s: (s["started_at"], s["session_id"]))

    def session(self, session_id: str) -> dict[str, Any] | None:
        """One session: live, else from the store; None if neither knows it."""
        live = self.live.get(session_id)
        row = self.store.session(session_id)
        if live is None and row is None:
            return None
        status = live["status"] if live is not None else row["status"]  # type: ignore[index]
        transcript = row["transcript"] if row is not None else live["transcript"]  # type: ignore[index]
        return {
            "session_id": session_id,
            "status": status,
            "turns": self.store.turns(session_id),
            "transcript": transcript,
            "live": None if live is None else _shown(live),
            "final": row,
        }

    def ready(self) -> bool:
        """Tables restored from their changelogs and partitions assigned: the views are complete."""
        recovery: Any = getattr(self.app.tables, "recovery")  # noqa: B009  # not in TableManagerT
        return bool(recovery.completed.is_set()) and not self.app.rebalancing

    def stats(self, minutes: int) -> dict[str, Any]:
        by_minute: dict[int, list[core.Window]] = {}
        for key, window in self.windows.items():
            by_minute.setdefault(int(key.split(":")[0]), []).append(window)
        merged = {start: core.merge(parts) for start, parts in by_minute.items()}
        out = core.stats(merged, self.clock_ms(), minutes)
        out["open_sessions"] = sum(1 for s in self.live.values() if s["status"] == "open")
        out["rejected_records"] = self.rejected
        return out


def _shown(session: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in session.items() if name != core.APPLIED}


def make_app(settings: Settings) -> faust.App:
    faust_fixes.apply()
    brokers = [f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")]
    datadir = Path(settings.analytics_db).parent / f"{settings.analytics_id}-faust"
    return faust.App(
        settings.analytics_id,
        broker=brokers,
        store="memory://",  # tables live in memory and are rebuilt from their changelogs on start
        processing_guarantee="exactly_once",  # read_committed, changelog + offsets in one transaction
        autodiscover=False,
        datadir=str(datadir),
        web_bind=settings.analytics_host,
        web_host=settings.analytics_host,
        web_port=settings.analytics_port,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=0.5,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000,
        web_tables_enabled=False,
        web_router_enabled=False,
        Table=TrackedTable,
    )


def _ms(timestamp: float | None) -> int | None:
    """Faust gives a record's timestamp in seconds."""
    return None if timestamp is None else round(timestamp * 1000)
