"""One transactional producer per input partition: a :class:`~pipeline.commit.CommitPlan`, atomically.

aiokafka implements Kafka's per-partition exactly-once scheme ("EOS v1"): the transactional id is
derived from the input partition, so whichever worker owns the partition next fences the previous
owner's producer. :meth:`PartitionTransactions.commit` runs one transaction: the plan's records, its
checkpoints and tombstones for `stt.sessions` (written to the input partition's number, so each
`stt.sessions` partition has exactly one writer), and ``send_offsets_to_transaction`` of its offset.
A reader with ``read_committed`` sees outputs exactly when the input they came from counts as consumed.

A failed transaction is aborted and the producer replaced (a fresh one re-initializes the
transactional id); the caller puts the plan's records back (:meth:`CommitBook.failed`). A record the
broker or the client refuses for itself (too large, invalid) would fail every retry and hold back the
whole partition: :class:`RecordsRefused` names those records so the caller can quarantine them.
Being fenced is final: :class:`Fenced` tells the worker the partition is gone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    CorruptRecordException,
    MessageSizeTooLargeError,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
)

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

    async def start(self) -> None:
        settings = self.settings
        self._producer = AIOKafkaProducer(
            **kafka_options(settings, f"txn-{self.input_tp.partition}"),
            transactional_id=self.transactional_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=settings.producer_linger_ms,
            request_timeout_ms=settings.producer_request_timeout_ms,
            max_request_size=settings.max_request_size,
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                await producer.stop()
            except Exception:
                log.debug("stopping producer %s failed", self.transactional_id, exc_info=True)

    async def commit(self, plan: CommitPlan) -> None:
        """Run ``plan`` as one transaction. Raises :class:`Fenced`, :class:`RecordsRefused` or
        :class:`TransactionFailed` (aborted, producer replaced); returns once committed."""
        if plan.empty:
            return
        async with self._lock:
            try:
                await self._run(plan)
            except ProducerFenced as exc:
                raise Fenced(f"{self.transactional_id} was fenced by a newer owner") from exc
            except TransactionFailed:
                self.failures += 1
                await self._recover()
                raise
            except Exception as exc:
                self.failures += 1
                log.warning("transaction on %s failed (%r); will retry", self.transactional_id, exc)
                await self._recover()
                raise TransactionFailed(repr(exc)) from exc
            self.transactions += 1

    async def _run(self, plan: CommitPlan) -> None:
        producer = self._producer
        if producer is None:
            await self.start()
            producer = self._producer
            assert producer is not None
        await producer.begin_transaction()
        try:
            records = list(plan.records)
            for session_id, checkpoint in plan.checkpoints:
                value = None if checkpoint is None else checkpoint.to_json()
                records.append(OutRecord(self.sessions_topic, session_id, value, self.input_tp.partition))
            futures: dict[int, asyncio.Future[object]] = {}
            refused: dict[int, str] = {}
            for i, record in enumerate(records):
                key = None if record.key is None else record.key.encode()
                try:
                    futures[i] = await producer.send(
                        record.topic, value=record.value, key=key, partition=record.partition
                    )
                except _REFUSED as exc:
                    refused[i] = type(exc).__name__
            if plan.advance:
                await producer.send_offsets_to_transaction({self.input_tp: plan.offset}, self.settings.group_id)
            results = await asyncio.gather(*futures.values(), return_exceptions=True)
            for i, result in zip(futures, results, strict=True):
                if isinstance(result, _REFUSED):
                    refused[i] = type(result).__name__
                elif isinstance(result, BaseException):
                    raise result
            if refused:
                raise RecordsRefused({i: e for i, e in refused.items() if i < len(plan.records)} or refused)
            await producer.commit_transaction()
        except BaseException:
            try:
                await producer.abort_transaction()
            except Exception:
                log.debug("abort on %s failed", self.transactional_id, exc_info=True)
            raise

    async def _recover(self) -> None:
        """Replace the producer: a fresh one re-initializes the transactional id (and fences nothing else)."""
        await self.stop()
        try:
            await self.start()
        except Exception as exc:
            log.warning("restarting producer %s failed (%r)", self.transactional_id, exc)
            await self.stop()
