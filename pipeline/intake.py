"""Record intake: what the worker does with each input record it reads from an owned partition.

:meth:`Intake.handle` parses the record (:mod:`pipeline.records`), asks the :class:`~pipeline.router.Router`
for one decision and carries it out on the :class:`~pipeline.sessions.SessionTable`: open or resume a
session, deliver to an open one, skip, count a duplicate, defer (the deferred floor then holds the
partition's watermark), or reject. Whatever the record holds, it ends handled, skipped or
dead-lettered: a rejection, or any exception while handling it, dead-letters *that record*.
:meth:`Intake.corrupt` dead-letters by offset a record aiokafka could not decode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiokafka import ConsumerRecord

from pipeline import metrics
from pipeline.kafka.fetch import CorruptRecord
from pipeline.letters import corrupt_letter, dead_letter_record
from pipeline.owned import OwnedPartition
from pipeline.records import InputLimits, Rejected, parse
from pipeline.redact import scrub
from pipeline.router import Decision, Router
from pipeline.session import Resume
from pipeline.sessions import SessionTable
from pipeline.settings import Settings
from pipeline.snapshot import Counters

log = logging.getLogger("pipeline.worker")  # the worker's log lines, under the name they always had


class Intake:
    def __init__(
        self,
        settings: Settings,
        counters: Counters,
        router: Router,
        sessions: SessionTable,
        letter_bytes: Callable[[], int],
    ) -> None:
        self.settings, self.counters = settings, counters
        self._limits = InputLimits(settings.max_key_bytes, settings.max_header_bytes)
        self._router, self._sessions, self._letter_bytes = router, sessions, letter_bytes

    def handle(self, owned: OwnedPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        """Route one record. Whatever the record holds, it ends handled, skipped or dead-lettered."""
        partition, offset = owned.tp.partition, record.offset
        if self._router.seen(partition, offset):
            return  # read before a rebalance or a rewind, and handled then
        self.counters.records += 1
        metrics.RECORDS.inc()
        session_id: str | None = None
        try:
            message = parse(record.key, record.headers, record.value, limits=self._limits, timestamp=record.timestamp)
            session_id = message.session_id
            route = self._router.route(partition, offset, message, owned.book.checkpoint)
            decision = route.decision
            if decision is Decision.REJECT:
                raise Rejected(route.reason, route.detail)
            if decision is Decision.DEFER:
                self.counters.deferred += 1
            elif decision is Decision.SKIP:
                self.counters.replay_skipped += route.reason != "handled"
            elif decision is Decision.DUPLICATE:
                self.counters.duplicates += 1
            elif decision in (Decision.OPEN, Decision.RESUME):
                resume = None if route.checkpoint is None else Resume.from_checkpoint(route.checkpoint)
                fmt = route.checkpoint.format if route.checkpoint is not None else route.format
                assert fmt is not None
                owned.dormant.pop(session_id, None)
                self.counters.sessions_resumed += decision is Decision.RESUME
                self._router.opened(session_id, partition)
                current = self._sessions.start(session_id, fmt, partition, offset, resume)
                self._sessions.deliver(current, message, offset)
            else:
                current_open = self._sessions.get(session_id)
                assert current_open is not None
                if not self._sessions.deliver(current_open, message, offset):
                    self.counters.duplicates += 1
        except Rejected as rejected:
            self._router.read(partition, offset)
            self._dead_letter(owned, record, rejected.reason, rejected.detail, session_id)
        except Exception as exc:  # a bug meets a record: that record is dead-lettered, nothing else stops
            log.exception("p%d@%d could not be handled", partition, offset)
            self._router.read(partition, offset)
            self._dead_letter(owned, record, "unparseable", f"{type(exc).__name__}: {exc}", session_id)
        owned.book.undecided(self._router.deferred_floor(partition))
        owned.book.consumed(offset)

    def _dead_letter(
        self,
        owned: OwnedPartition,
        record: ConsumerRecord[bytes, bytes],
        reason: str,
        detail: str,
        session_id: str | None,
    ) -> None:
        if owned.book.lettered(record.offset):  # replayed after a crash: its letter is committed already
            self.counters.letters_replayed += 1
            log.info("p%d@%d was dead-lettered by the previous owner (%s)", owned.tp.partition, record.offset, reason)
            return
        self.counters.dead_letters += 1
        metrics.DEAD_LETTERS.labels(reason).inc()
        log.warning("dead letter p%d@%d %s: %s", owned.tp.partition, record.offset, reason, scrub(detail, [], 200))
        letter = dead_letter_record(self.settings, self._letter_bytes(), owned.tp, record, reason, detail, session_id)
        owned.book.add_letter(letter, record.offset)
        owned.kick()

    def corrupt(self, owned: OwnedPartition, corrupt: CorruptRecord) -> None:
        """A record aiokafka could not decode was skipped: dead-letter what is known of it."""
        self.counters.corrupt_records += 1
        log.error("skipped undecodable record p%d@%d: %s", corrupt.tp.partition, corrupt.offset, corrupt.error)
        if not self._router.seen(corrupt.tp.partition, corrupt.offset):
            if owned.book.lettered(corrupt.offset):  # replayed after a crash: its letter is committed already
                self.counters.letters_replayed += 1
            else:
                self.counters.dead_letters += 1
                metrics.DEAD_LETTERS.labels("unparseable").inc()
                owned.book.add_letter(corrupt_letter(self.settings, self._letter_bytes(), corrupt), corrupt.offset)
                owned.kick()
            owned.book.consumed(corrupt.offset)
            self._router.read(corrupt.tp.partition, corrupt.offset)
