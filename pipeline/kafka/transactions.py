"""One transactional producer per input partition: a :class:`~pipeline.commit.CommitPlan`, atomically.

aiokafka implements Kafka's per-partition exactly-once scheme ("EOS v1"): the transactional id is
derived from the input partition, so whichever worker owns the partition next fences the previous
owner's producer. :meth:`PartitionTransactions.commit` runs one transaction: the plan's records, its
checkpoints and tombstones for `stt.sessions` (written to the input partition's number, so each
`stt.sessions` partition has exactly one writer), and ``send_offsets_to_transaction`` of its offset,
with the plan's :class:`~pipeline.commit.Mark` as the commit's metadata (read back at assignment by
:mod:`pipeline.kafka.committed`). A reader with ``read_committed`` sees outputs
exactly when the input they came from counts as consumed.

Eager sends (as Kafka Streams does): :meth:`PartitionTransactions.send` begins the transaction on the
first record and sends records into it as soon as they exist, so ``read_uncommitted`` live views see
them within milliseconds; :meth:`commit` then sends only what the plan has not sent yet
(``plan.unsent``), the checkpoints and the offset, waits for every acknowledgement of the transaction
and commits. An eager send that fails dooms the open transaction: the next commit aborts it and the
caller requeues all its records, sent or not.

Once Kafka has been asked to commit, the answer is awaited even if :meth:`commit` is cancelled
meanwhile: the cancellation is raised after it, and :meth:`PartitionTransactions.committed` tells the
caller whether that plan's transaction committed (its records must then not be sent again) or not
(they must). Aborting is not possible at that point, and guessing either way loses or repeats records.

A failed transaction is aborted and the producer replaced (a fresh one re-initializes the
transactional id); the caller puts the plan's records back (:meth:`CommitBook.failed`). A record the
broker or the client refuses for itself (too large, invalid) would fail every retry and hold back the
whole partition: :class:`RecordsRefused` names those records so the caller can quarantine them.
Being fenced is final: :class:`Fenced` tells the worker the partition is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    CorruptRecordException,
    MessageSizeTooLargeError,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from aiokafka.structs import OffsetAndMetadata

from pipeline import metrics
from pipeline.commit import CommitPlan, OutRecord
from pipeline.errors import DeliveryError
from pipeline.kafka.clients import kafka_options

if TYPE_CHECKING:
    from pipeline.settings import Settings

log = logging.getLogger("pipeline.kafka.transactions")

# Errors that belong to one record, not to the transaction: retrying cannot help.
_REFUSED = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError, CorruptRecordException)


class Fenced(DeliveryError):
    """Another worker now owns this partition's transactional id."""


class TransactionFailed(DeliveryError):
    """The transaction was aborted; its records must be retried."""


class RecordsRefused(TransactionFailed):
    """The transaction was aborted because Kafka refused these records (indexes into the plan's records)."""

    def __init__(self, refused: dict[int, str]) -> None:
        super().__init__(f"{len(refused)} record(s) refused: " + "; ".join(sorted(set(refused.values())))[:500])
        self.refused = refused


def transactional_id(group_id: str, topic: str, partition: int) -> str:
    return f"stt-pipeline.{group_id}.{topic}.{partition}"


class PartitionTransactions:
    def __init__(self, settings: Settings, input_tp: TopicPartition, sessions_topic: str) -> None:
        self.settings = settings
        self.input_tp = input_tp
        self.sessions_topic = sessions_topic
        self.transactional_id = transactional_id(settings.group_id, input_tp.topic, input_tp.partition)
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self.transactions = 0
        self.failures = 0
        # the open transaction: begun, its records' acknowledgements by index, refused records, the
        # error of a failed eager send (which dooms it)
        self._open = False
        self._futures: dict[int, asyncio.Future[object]] = {}
        self._refused: dict[int, str] = {}
        self._sent = 0
        self._doomed: BaseException | None = None
        self._last_committed: CommitPlan | None = None
        self._closed = asyncio.Event()  # stopped for good: the partition was let go

    def committed(self, plan: CommitPlan) -> bool:
        """Whether ``plan``'s transaction committed: the answer for a :meth:`commit` that was cancelled."""
        return self._last_committed is plan

    async def start(self) -> None:
        settings = self.settings
        self._producer = AIOKafkaProducer(
            **kafka_options(settings, f"txn-{self.input_tp.partition}"),
            transactional_id=self.transactional_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=settings.producer_linger_ms,
            retry_backoff_ms=settings.producer_retry_backoff_ms,
            request_timeout_ms=settings.producer_request_timeout_ms,
            max_request_size=settings.max_request_size,
        )
        await self._producer.start()

    async def stop(self) -> None:
        """The partition is let go: stop the producer for good. A transaction still open is lost with it
        (never committed by this worker; the next owner's producer aborts it). A :meth:`commit` in
        flight ends at once (:class:`TransactionFailed` unless Kafka had already answered that it
        committed); later calls write nothing: they never start a producer that would fence the
        partition's next owner."""
        self._closed.set()
        await self._stop_producer()

    async def _stop_producer(self) -> None:
        self._open, self._futures, self._refused, self._sent, self._doomed = False, {}, {}, 0, None
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                await producer.stop()
            except Exception:
                log.debug("stopping producer %s failed", self.transactional_id, exc_info=True)

    async def send(self, records: Sequence[OutRecord]) -> None:
        """Eager mode: send ``records`` into the open transaction now (beginning it if needed). Never
        raises: a failure dooms the transaction, and the next :meth:`commit` aborts it."""
        if not records:
            return
        async with self._lock:
            if self._doomed is not None:
                self._sent += len(records)
                return
            try:
                producer = await self._begin()
                await self._send_all(producer, records)
            except BaseException as exc:  # a cancellation too: some of these records may not be sent
                self._doomed = exc
                if isinstance(exc, asyncio.CancelledError):
                    raise

    async def commit(self, plan: CommitPlan) -> None:
        """Run ``plan`` as one transaction (its first ``plan.sent`` records were sent by :meth:`send`).
        Raises :class:`Fenced`, :class:`RecordsRefused` or :class:`TransactionFailed` (aborted,
        producer replaced); returns once committed."""
        if plan.empty and not self._open:
            return
        async with self._lock:
            try:
                await self._unless_stopped(self._run(plan), plan)
            except ProducerFenced as exc:
                raise Fenced(f"{self.transactional_id} was fenced by a newer owner") from exc
            except TransactionFailed:
                self.failures += 1
                if not self._closed.is_set():
                    await self._recover()
                raise
            except Exception as exc:
                self.failures += 1
                log.warning("transaction on %s failed (%r); will retry", self.transactional_id, exc)
                await self._recover()
                raise TransactionFailed(repr(exc)) from exc
            self.transactions += 1

    async def _unless_stopped(self, run: Coroutine[Any, Any, None], plan: CommitPlan) -> None:
        """``run``, unless :meth:`stop` comes first: a stopped producer never answers what is awaited of
        it, so the commit ends then, even while Kafka commits (:meth:`_end` stops waiting too)."""
        if self._closed.is_set():
            run.close()
            raise TransactionFailed(f"{self.transactional_id} was let go")
        task = asyncio.ensure_future(run)
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({task, closed}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            closed.cancel()
            task.cancel()  # a commit already asked of Kafka still waits for its answer (see _end)
            with contextlib.suppress(BaseException):  # the cancellation goes on, whatever the run did
                await task
            raise
        closed.cancel()
        if task.done():
            task.result()
            return
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        if self._last_committed is not plan:
            raise TransactionFailed(f"{self.transactional_id} was let go during the transaction")

    async def _begin(self) -> AIOKafkaProducer:
        if self._closed.is_set():
            raise TransactionFailed(f"{self.transactional_id} was let go")
        producer = self._producer
        if producer is None:
            await self.start()
            producer = self._producer
            assert producer is not None
        if not self._open:
            await producer.begin_transaction()
            self._open = True
        return producer

    async def _send_all(self, producer: AIOKafkaProducer, records: Sequence[OutRecord]) -> None:
        for record in records:
            index, self._sent = self._sent, self._sent + 1
            key = None if record.key is None else record.key.encode()
            try:
                future = await producer.send(record.topic, value=record.value, key=key, partition=record.partition)
            except _REFUSED as exc:
                self._refused[index] = type(exc).__name__
                continue
            self._futures[index] = future
            if record.created_at:
                future.add_done_callback(lambda f, created=record.created_at: metrics.observe_acked(f, created))

    async def _run(self, plan: CommitPlan) -> None:
        asked = False  # Kafka was asked to commit: from then on only its answer settles the plan
        try:
            doomed = self._doomed
            if doomed is not None:
                if isinstance(doomed, Exception):
                    raise doomed
                raise TransactionFailed(f"an eager send was interrupted ({doomed!r})")
            if plan.sent != self._sent:
                raise TransactionFailed(f"the plan counts {plan.sent} records sent, the transaction {self._sent}")
            producer = await self._begin()
            await self._send_all(producer, plan.unsent)
            partition = self.input_tp.partition
            checkpoints = [
                OutRecord(self.sessions_topic, session_id, None if c is None else c.to_json(), partition)
                for session_id, c in plan.checkpoints
            ]
            await self._send_all(producer, checkpoints)
            if plan.advance:
                committed = OffsetAndMetadata(plan.offset, plan.mark.metadata())
                await producer.send_offsets_to_transaction({self.input_tp: committed}, self.settings.group_id)
            futures = self._futures
            results = await asyncio.gather(*futures.values(), return_exceptions=True)
            refused = self._refused
            for i, result in zip(futures, results, strict=True):
                if isinstance(result, _REFUSED):
                    refused[i] = type(result).__name__
                elif isinstance(result, BaseException):
                    raise result
            if refused:
                raise RecordsRefused({i: e for i, e in refused.items() if i < len(plan.records)} or refused)
            asked = True
            await self._end(producer, plan)
        except BaseException:
            if self._open and self._producer is not None and not asked:
                try:
                    await self._producer.abort_transaction()
                except Exception:
                    log.debug("abort on %s failed", self.transactional_id, exc_info=True)
            raise
        finally:
            self._open, self._futures, self._refused, self._sent, self._doomed = False, {}, {}, 0, None

    async def _end(self, producer: AIOKafkaProducer, plan: CommitPlan) -> None:
        """Commit the open transaction and wait for Kafka's answer; a cancellation meanwhile is raised
        only once the answer is in (recorded for :meth:`committed`). If the partition is let go
        (:meth:`stop`) before the answer, it will not come: :class:`TransactionFailed`."""
        ending = asyncio.ensure_future(producer.commit_transaction())
        closed = asyncio.ensure_future(self._closed.wait())
        interrupted: asyncio.CancelledError | None = None
        while not ending.done() and not closed.done():
            try:
                await asyncio.wait({ending, closed}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError as exc:
                interrupted = exc
        closed.cancel()
        if ending.done() and not ending.cancelled() and ending.exception() is None:
            self._last_committed = plan
        if not ending.done():  # let go meanwhile: the answer will not come to this producer
            ending.cancel()
        if interrupted is not None:
            raise interrupted
        if ending.cancelled():
            raise TransactionFailed(f"{self.transactional_id} was let go while Kafka committed")
        ending.result()

    async def _recover(self) -> None:
        """Replace the producer: a fresh one re-initializes the transactional id (and fences nothing else)."""
        await self._stop_producer()
        try:
            await self.start()
        except Exception as exc:
            log.warning("restarting producer %s failed (%r)", self.transactional_id, exc)
            await self._stop_producer()
