"""One transactional producer per input partition: outputs, checkpoints and the input offset, atomically.

aiokafka implements Kafka's per-partition exactly-once scheme ("EOS v1"): the transactional id is
derived from the input partition, so whichever worker owns the partition next fences the previous
owner's producer. Each :meth:`PartitionTransactions.commit` runs one transaction holding every record
queued since the last one, the sessions' checkpoints (and tombstones) for `stt.sessions`, and
``send_offsets_to_transaction`` of the partition's watermark, so a reader with ``read_committed`` sees
outputs exactly when the input they came from counts as consumed.

A transaction that fails is aborted and its records are queued again for the next one; a fatal
producer error (e.g. the broker lost the producer's state) makes a fresh producer, which re-initializes
the transactional id. Being fenced is final: :class:`Fenced` tells the worker the partition is gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import ProducerFenced

from pipeline.settings import Settings

log = logging.getLogger("pipeline.kafka.transactions")


class Acks:
    """The acknowledgements of one batch of records: ``done`` resolves when all are committed."""

    def __init__(self, count: int) -> None:
        self._left = count
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if count == 0:
            self.done.set_result(None)

    def _ack(self, error: BaseException | None) -> None:
        if self.done.done():
            return
        if error is not None:
            self.done.set_exception(error)
            return
        self._left -= 1
        if self._left == 0:
            self.done.set_result(None)


Queued = tuple[str, bytes | None, bytes | None, Acks | None]
Extra = list[tuple[str, str, Mapping[str, Any] | None]]


class Fenced(RuntimeError):
    """Another worker now owns this partition's transactional id."""


def transactional_id(group_id: str, topic: str, partition: int) -> str:
    return f"stt-pipeline.{group_id}.{topic}.{partition}"


class PartitionTransactions:
    """``settings`` supplies the producer's tuning (``producer_linger_ms``, ``producer_request_timeout_ms``,
    ``max_request_size``); without it, the defaults of :class:`~pipeline.settings.Settings`."""

    def __init__(
        self, bootstrap_servers: str, group_id: str, input_tp: TopicPartition, settings: Settings | None = None
    ) -> None:
        tuning = settings if settings is not None else Settings.load(env={})
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self.input_tp = input_tp
        self.transactional_id = transactional_id(group_id, input_tp.topic, input_tp.partition)
        self._producer: AIOKafkaProducer | None = None
        self._pending: list[Queued] = []
        self._lock = asyncio.Lock()
        self.committed_offset: int | None = None
        self.transactions = 0
        self.failures = 0
        self._linger_ms = tuning.producer_linger_ms
        self._request_timeout_ms = tuning.producer_request_timeout_ms
        self._max_request_size = tuning.max_request_size

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            transactional_id=self.transactional_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=self._linger_ms,
            request_timeout_ms=self._request_timeout_ms,
            max_request_size=self._max_request_size,
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                await producer.stop()
            except Exception:
                log.debug("stopping producer %s failed", self.transactional_id, exc_info=True)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, records: list[tuple[str, str | None, Mapping[str, Any] | None]]) -> Acks:
        """Queue records for the next transaction; ``None`` as a record is a tombstone."""
        acks = Acks(len(records))
        for topic, key, record in records:
            value = None if record is None else orjson.dumps(record)
            self._pending.append((topic, None if key is None else key.encode(), value, acks))
        return acks

    async def commit(self, build: Callable[[], tuple[int | None, Extra]]) -> Extra | None:
        """One transaction: the queued records, plus what ``build()`` returns: the input offset to commit
        and extra records (checkpoints, tombstones).

        ``build`` runs synchronously together with taking the queued records, so the checkpoints it
        returns describe exactly the records in this and earlier transactions. Returns the extra
        records once committed (``[]`` when there was nothing to do); on a retriable failure the
        queued records are kept for the next transaction and None is returned. Raises
        :class:`Fenced` if the partition now belongs to another worker.
        """
        async with self._lock:
            offset, extra = build()
            advance = offset is not None and offset != self.committed_offset
            if not self._pending and not extra and not advance:
                return []
            batch = self._pending
            self._pending = []
            for topic, key, record in extra:
                batch.append((topic, key.encode(), None if record is None else orjson.dumps(record), None))
            extras = len(extra)
            try:
                await self._run(batch, offset if advance else None, extras)
            except ProducerFenced as exc:
                error = Fenced(f"{self.transactional_id} was fenced by a newer owner")
                for *_, acks in batch:
                    if acks is not None:
                        acks._ack(error)
                raise error from exc
            except BaseException as exc:
                # Outputs must never be lost: whatever stopped this transaction (broker trouble, or a
                # cancellation), its records go back to the front of the queue. Checkpoints are rebuilt
                # by the next commit.
                self._pending = [q for q in batch if q[3] is not None] + self._pending
                if not isinstance(exc, Exception):
                    raise
                self.failures += 1
                log.warning("transaction on %s failed (%r); will retry", self.transactional_id, exc)
                await self._recover()
                return None
            self.transactions += 1
            if advance:
                self.committed_offset = offset
            for *_, acks in batch:
                if acks is not None:
                    acks._ack(None)
            return extra

    async def _run(self, batch: list[Queued], offset: int | None, extras: int) -> None:
        """Send ``batch`` in one transaction; its last ``extras`` records (checkpoints) go to the
        input partition's number, so each `stt.sessions` partition has exactly one writer."""
        producer = self._producer
        if producer is None:
            await self.start()
            producer = self._producer
            assert producer is not None
        await producer.begin_transaction()
        try:
            first_extra = len(batch) - extras
            futures = [
                await producer.send(
                    topic, value=value, key=key, partition=self.input_tp.partition if i >= first_extra else None
                )
                for i, (topic, key, value, _) in enumerate(batch)
            ]
            if offset is not None:
                await producer.send_offsets_to_transaction({self.input_tp: offset}, self.group_id)
            if futures:
                await asyncio.gather(*futures)
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
